"""The search and the speedups of benchmarks/convergence.py, on made-up rows (no model)."""

import math

from benchmarks import convergence as C


def _bowl(lr_best, wd_best):
    return lambda lr, wd: abs(math.log10(lr / lr_best)) + abs(math.log10((wd + 1e-3) / wd_best))


def test_the_search_grows_the_grid_until_the_winner_is_interior():
    best, report = C.search(_bowl(3e-4, 100.0))
    assert best == (3e-4, 100.0)
    assert report["interior"] == {"lr": True, "wd": False}  # 100 ends the ladder
    assert "0.0001/100" in report["tried"]  # grown past 3e-4 to show it is interior
    assert len(report["tried"]) == 5 * 4  # lr 1e-4..1e-2 x wd 0.1..100: whole rows, columns


def test_an_interior_winner_stops_the_search_at_the_first_grid():
    best, report = C.search(_bowl(3e-3, 1.0))
    assert best == (3e-3, 1.0) and len(report["tried"]) == 9
    assert report["interior"] == {"lr": True, "wd": True}


def _curve(rate, seed):
    return [(s, 5 + 6 * math.exp(-rate * s / 30) + 0.01 * seed) for s in C.CHECKS]


def test_speedup_is_random_inits_steps_over_this_inits_steps_to_the_same_loss():
    rows = {}
    for init, rate in (("random", 1.0), ("surgeon", 4.0)):
        for lr in C.LRS:
            for wd in C.DECAYS:
                score = _bowl(3e-3, 1.0)(lr, wd)
                rows[C.row_key("extreme", init, lr, wd, 0)] = {
                    "test": _curve(rate, 0), "validation": score
                }  # fmt: skip
        for seed in (1, 2):
            rows[C.row_key("extreme", init, 3e-3, 1.0, seed)] = {"test": _curve(rate, seed)}
    table = C.summarise(rows)["extreme"]
    random_final = {s: _curve(1.0, s)[-1][1] for s in (0, 1, 2)}
    # by hand: the first check at or below random's final loss, per seed
    steps = [next(s for s, v in _curve(4.0, seed) if v <= random_final[seed]) for seed in (0, 1, 2)]
    assert table["surgeon"]["budgets"][C.STEPS]["steps"] == steps
    assert table["surgeon"]["speedup"]["mean"] == C.STEPS / steps[0]
    assert table["random"]["speedup"]["mean"] == 1.0
    assert table["surgeon"]["seeds"] == [0, 1, 2]


def test_an_unfinished_search_is_left_out_of_the_summary():
    rows = {C.row_key("extreme", "random", 1e-3, 0.1, 0): {"test": _curve(1, 0), "validation": 1}}
    assert C.summarise(rows) == {}
