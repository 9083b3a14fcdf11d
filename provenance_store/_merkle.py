"""The RFC 6962 Merkle tree of the audit log: tree hashes, inclusion and consistency proofs.

Pure functions of SHA-256 (nothing of the database): generation follows RFC 6962 §2.1
(``MTH``, ``PATH``, ``PROOF``), verification RFC 9162 §2.1.3.2 and §2.1.4.2. Leaves are given
as their leaf hashes, ``leaf_hash(data) = SHA-256(0x00 || data)``; an interior node is
``SHA-256(0x01 || left || right)``. The empty tree's hash is ``SHA-256("")``.

Generation reads every leaf hash of the tree (O(n) hashes per call); that is cheap for an
audit log of administrative actions (a million entries hash in about a second).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32


class MerkleError(ValueError):
    """A proof asked for a leaf or size the tree does not have."""


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of a leaf holding ``data``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """``MTH(D[n])`` of the leaves (given as leaf hashes); ``SHA-256("")`` for none."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    return _mth(leaves, 0, len(leaves))


def _mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(_mth(leaves, lo, lo + k), _mth(leaves, lo + k, hi))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """``PATH(index, D[n])``: the audit path of leaf ``index`` in the tree of ``leaves``.

    Raises:
        MerkleError: ``index`` is not a leaf of the tree.
    """
    _check_leaf(leaves, index)
    return _path(functools.partial(_mth, leaves), index, 0, len(leaves))


def inclusion_proofs(leaves: Sequence[bytes], indices: Iterable[int]) -> dict[int, list[bytes]]:
    """``PATH(m, D[n])`` for each ``m`` of ``indices``, by leaf index. The proofs share their
    subtree hashes, so many proofs of one tree cost about one pass over it (``inclusion_proof``
    rehashes the tree for each).

    Raises:
        MerkleError: an index is not a leaf of the tree.
    """
    wanted = sorted(set(indices))
    for index in wanted:
        _check_leaf(leaves, index)

    @functools.cache
    def subtree(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo]
        k = _split(hi - lo)
        return node_hash(subtree(lo, lo + k), subtree(lo + k, hi))

    return {m: _path(subtree, m, 0, len(leaves)) for m in wanted}


def _check_leaf(leaves: Sequence[bytes], index: int) -> None:
    if not 0 <= index < len(leaves):
        raise MerkleError(f"leaf {index} is not in a tree of size {len(leaves)}")


def _path(subtree: Callable[[int, int], bytes], m: int, lo: int, hi: int) -> list[bytes]:
    """The audit path of leaf ``lo + m`` in the subtree ``[lo, hi)``; ``subtree(lo, hi)`` gives
    ``MTH`` of the leaves ``[lo, hi)``."""
    n = hi - lo
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(subtree, m, lo, lo + k), subtree(lo + k, hi)]
    return [*_path(subtree, m - k, lo + k, hi), subtree(lo, lo + k)]


def consistency_proof(leaves: Sequence[bytes], first: int) -> list[bytes]:
    """``PROOF(first, D[n])``: that the tree of the first ``first`` leaves is a prefix of the
    tree of all ``leaves``. Empty for ``first == n`` and (by convention, the empty tree being a
    prefix of every tree) for ``first == 0``.

    Raises:
        MerkleError: ``first`` is negative or larger than the tree.
    """
    if not 0 <= first <= len(leaves):
        raise MerkleError(f"size {first} is not within a tree of size {len(leaves)}")
    if first == 0:
        return []
    return _subproof(leaves, first, 0, len(leaves), True)


def _subproof(leaves: Sequence[bytes], m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if complete else [_mth(leaves, lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(leaves, m, lo, lo + k, complete), _mth(leaves, lo + k, hi)]
    return [*_subproof(leaves, m - k, lo + k, hi, False), _mth(leaves, lo, lo + k)]


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows the leaf hash ``leaf`` at ``index`` of the tree of
    ``tree_size`` leaves whose root is ``root`` (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < tree_size:
        return False
    fn, sn = index, tree_size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree of size ``first`` with root ``first_root`` to be a
    prefix of the tree of size ``second`` with root ``second_root`` (RFC 9162 §2.1.4.2).

    Equal sizes need an empty proof and equal roots; the empty tree (``first == 0``) is a
    prefix of every tree and needs an empty proof.
    """
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: its root is the first node
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
