"""Files in and out: safetensors shards (read as views, written block by block), tensor
names as checkpoints store them, atomic output folders, calibration text and batches."""
