"""The dimension algebra: atoms, union-find, and refinement into products and concatenations.

Every axis of every tensor in the graph is an *atom*. Op rules *unify* atoms that must be
permuted (and sliced) together. An atom can be *refined*: as a product of smaller atoms
(`view` of hidden 64 as heads 4 x head_dim 16, outermost first) or as a concatenation of
segments (`split` of a fused qkv axis into q | k | v). Unifying two refined atoms unifies
their parts, refining further where their boundaries differ. The *groups* are the classes
of atoms that are never refined (leaves): permuting every axis position that a leaf
indexes, by one permutation, is what the op rules guarantee leaves the function unchanged.

An atom is *pinned* when the positions along it carry meaning (graph inputs and outputs,
token ids, an index picked by `select` or a non-aligned slice): it may not be permuted,
and neither may anything it is refined into.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch

__all__ = ["Atoms", "Refinement"]


@dataclass(frozen=True)
class Refinement:
    """How an atom is made of smaller ones: `prod` (heads x head_dim, outermost first: a
    position of the whole is a position in each part) or `cat` (q|k|v segments, in
    order: the whole is the parts one after the other)."""

    kind: str  # "prod" (outermost first) | "cat" (segments in order)
    parts: tuple[int, ...]


class Atoms:
    """A union-find of atoms with sizes, refinements and pins."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.refinement: dict[int, Refinement] = {}
        self.pinned: dict[int, str] = {}  # root -> why

    # -- basics ----------------------------------------------------------------------
    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def pin(self, a: int, why: str) -> None:
        a = self.find(a)
        self.pinned.setdefault(a, why)

    def parts(self, a: int) -> Refinement | None:
        return self.refinement.get(self.find(a))

    def refine(self, whole: int, kind: str, parts: tuple[int, ...]) -> None:
        """`whole` (a fresh atom) is the product or concatenation of `parts`; of one part,
        that part itself (a refinement of itself would be descended into for ever)."""
        if len(parts) == 1:
            self.unify(whole, parts[0])
        elif parts:
            self.refinement[whole] = Refinement(kind, tuple(parts))

    # -- unification -----------------------------------------------------------------
    def unify(self, a: int, b: int) -> None:
        """Make `a` and `b` one atom (their sizes must be equal), merging their refinements."""
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.size[a] != self.size[b]:
            self.pin(a, "unified with an axis of another size")
            self.pin(b, "unified with an axis of another size")
            return
        ra, rb = self.refinement.pop(a, None), self.refinement.pop(b, None)
        self.parent[b] = a
        if b in self.pinned:
            self.pinned.setdefault(a, self.pinned.pop(b))
        if ra is None or rb is None:
            if ra or rb:
                self.refinement[a] = ra or rb
            return
        self.refinement[a] = ra
        if ra.kind == rb.kind:
            self._align(list(ra.parts), list(rb.parts), ra.kind)
        else:
            self._align_mixed(a, ra, rb)

    def unify_seq(self, left: list[int], right: list[int]) -> None:
        """Unify two products of atoms with the same total size (the two sides of a view)."""
        self._align(left, right, "prod")

    def _align(self, left: list[int], right: list[int], kind: str) -> None:
        """Walk two sequences, splitting the larger head atom to match the smaller one."""
        qa, qb = deque(left), deque(right)
        while qa and qb:
            a, b = self.find(qa.popleft()), self.find(qb.popleft())
            sa, sb = self.size[a], self.size[b]
            if kind == "prod" and sa == 1:
                qb.appendleft(b)
                continue
            if kind == "prod" and sb == 1:
                qa.appendleft(a)
                continue
            if sa == sb:
                self.unify(a, b)
                continue
            big, small, qbig, qsmall = (a, b, qa, qb) if sa > sb else (b, a, qb, qa)
            r = self.refinement.get(big)
            if r is not None and r.kind == kind:  # already refined this way: descend
                qbig.extendleft(reversed(r.parts))
                qsmall.appendleft(small)
                continue
            if r is not None or (kind == "prod" and self.size[big] % self.size[small]):
                if not self._pin_span(big, small, qsmall, kind):
                    self._give_up(a, b, qa, qb, kind)
                    return
                continue
            rest = (
                self.size[big] // self.size[small]
                if kind == "prod"
                else (self.size[big] - self.size[small])
            )
            head, tail = self.new(self.size[small]), self.new(rest)
            self.refinement[big] = Refinement(kind, (head, tail))
            self.unify(head, small)
            qbig.appendleft(tail)
        rest = [x for x in (*qa, *qb) if self.size[self.find(x)] != 1 or kind == "cat"]
        if rest:
            for x in rest:
                self.pin(x, "axes that do not line up")

    def _pin_span(self, big: int, small: int, qsmall: deque, kind: str) -> bool:
        """`big` cannot be split like `small` and the atoms after it: where they span
        exactly `big` (a 16 of patches refined otherwise, viewed as 4 x 4), those are
        pinned and the alignment goes on past them; whether they did."""
        total, taken = self.size[small], [small]
        while qsmall and total < self.size[big]:
            x = self.find(qsmall.popleft())
            taken.append(x)
            total = total * self.size[x] if kind == "prod" else total + self.size[x]
        if total != self.size[big]:
            qsmall.extendleft(reversed(taken[1:]))
            return False
        for x in (big, *taken):
            self.pin(x, "axes that do not line up")
        return True

    def _give_up(self, a: int, b: int, qa, qb, kind: str = "prod") -> None:
        """What is left of both sides is pinned, but for the trailing atoms of equal size
        of a product (a view's last axes: `[B*H, seq, 16]` as `[B*H, 2, 4, 16]` where the
        sequence is refined otherwise keeps its 16), which are unified."""
        left, right = [a, *qa], [b, *qb]
        qa.clear()
        qb.clear()
        while kind == "prod" and left and right:
            x, y = self.find(left[-1]), self.find(right[-1])
            if self.size[x] == 1 or self.size[y] == 1:
                (left if self.size[x] == 1 else right).pop()
                continue
            if self.size[x] != self.size[y]:
                break
            self.unify(x, y)
            left.pop()
            right.pop()
        for x in (*left, *right):
            self.pin(x, "axes that do not line up")

    def _align_mixed(self, root: int, ra: Refinement, rb: Refinement) -> None:
        """A product [n, rest...] against n equal segments: each segment is `rest`, and the
        outer factor (which segment) is pinned. Anything else cannot be expressed: pin."""
        prod, cat = (ra, rb) if ra.kind == "prod" else (rb, ra)
        outer, inner = prod.parts[0], list(prod.parts[1:])
        segs = cat.parts
        if self.size[self.find(outer)] == len(segs) and inner:
            self.pin(outer, "index of a segment")
            for s in segs:
                self._align([s], inner, "prod")
            return
        self.pin(root, "product and concatenation that do not line up")

    def break_cycles(self) -> None:
        """An atom refined (through its parts) into itself, as unifications across several
        reshapes can leave: its refinement is dropped and the atom pinned, so that reading
        the result terminates and such an axis is never cut."""
        state: dict[int, int] = {}  # 1: on the current path, 2: done

        def visit(a: int) -> bool:  # whether a cycle runs through `a`
            a = self.find(a)
            if state.get(a) == 2:
                return False
            if state.get(a) == 1:
                return True
            state[a] = 1
            r = self.refinement.get(a)
            cyclic = r is not None and any([visit(p) for p in r.parts])
            if cyclic:
                del self.refinement[a]
                self.pin(a, "sizes that refine each other in a cycle")
            state[a] = 2
            return False

        for a in list(self.refinement):
            visit(a)

    # -- reading the result ----------------------------------------------------------
    def leaves(self, a: int) -> list[int]:
        """The leaf atoms (groups) an atom is made of, in index order, with repeats."""
        a = self.find(a)
        r = self.refinement.get(a)
        if r is None:
            return [a]
        return [leaf for p in r.parts for leaf in self.leaves(p)]

    def pinned_leaves(self) -> dict[int, str]:
        """Every leaf that must not be permuted: pinned itself or part of a pinned atom."""
        out: dict[int, str] = {}
        for root, why in self.pinned.items():
            if self.find(root) != root:
                continue
            for leaf in self.leaves(root):
                out.setdefault(leaf, why)
        return out

    def positions(self, a: int, select: dict[int, torch.Tensor]) -> torch.Tensor:
        """For an axis of atom `a`: the old position each new position takes its values
        from, when each leaf `g` in `select` keeps the old indices `select[g]` in that order
        (a permutation, or a subset after slicing); other leaves keep all, in order."""
        a = self.find(a)
        r = self.refinement.get(a)
        if r is None:
            chosen = select.get(a)
            return torch.arange(self.size[a]) if chosen is None else chosen
        maps = [self.positions(p, select) for p in r.parts]
        if r.kind == "cat":
            out, offset = [], 0
            for p, m in zip(r.parts, maps, strict=True):
                out.append(m + offset)
                offset += self.size[self.find(p)]
            return torch.cat(out)
        index = torch.zeros((), dtype=torch.long)
        for p, m in zip(r.parts, maps, strict=True):
            index = index.unsqueeze(-1) * self.size[self.find(p)] + m
        return index.reshape(-1)

    def new_size(self, a: int, keep: dict[int, int]) -> int:
        """The size of atom `a` when each leaf `g` in `keep` keeps `keep[g]` indices."""
        a = self.find(a)
        r = self.refinement.get(a)
        if r is None:
            return keep.get(a, self.size[a])
        sizes = [self.new_size(p, keep) for p in r.parts]
        return sum(sizes) if r.kind == "cat" else math.prod(sizes)
