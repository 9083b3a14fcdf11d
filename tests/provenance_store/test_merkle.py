"""The RFC 6962 Merkle tree against an independent naive implementation and known values."""

from __future__ import annotations

import hashlib

import pytest

from provenance_store._merkle import (
    MerkleError,
    consistency_proof,
    inclusion_proof,
    inclusion_proofs,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

N_MAX = 70
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(N_MAX)]


def _naive_root(leaves: list[bytes]) -> bytes:
    """MTH written straight from RFC 6962 §2.1, with lists and slices."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _naive_root(leaves[:k]) + _naive_root(leaves[k:])).digest()


def test_known_values() -> None:
    assert root_hash([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    # The leaf of the empty string (RFC 6962 test vectors, Certificate Transparency).
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert root_hash([leaf_hash(b"")]) == leaf_hash(b"")
    a, b, c = (leaf_hash(x) for x in (b"a", b"b", b"c"))
    assert root_hash([a, b, c]) == node_hash(node_hash(a, b), c)


def test_root_matches_the_naive_implementation() -> None:
    for n in range(N_MAX + 1):
        assert root_hash(LEAVES[:n]) == _naive_root(LEAVES[:n]), n


def test_every_inclusion_proof_verifies_and_wrong_ones_do_not() -> None:
    for n in range(1, N_MAX + 1):
        tree = LEAVES[:n]
        root = _naive_root(tree)
        for m in range(n):
            proof = inclusion_proof(tree, m)
            assert verify_inclusion(tree[m], m, n, proof, root), (m, n)
            assert not verify_inclusion(leaf_hash(b"other"), m, n, proof, root)
            if n > 1:
                assert not verify_inclusion(tree[m], (m + 1) % n, n, proof, root)
                assert not verify_inclusion(tree[m], m, n, proof[:-1], root)
                assert not verify_inclusion(tree[m], m, n, [*proof, proof[0]], root)


def test_batch_inclusion_proofs_equal_the_single_ones() -> None:
    for n in range(1, N_MAX + 1):
        tree = LEAVES[:n]
        every = inclusion_proofs(tree, range(n))
        assert every == {m: inclusion_proof(tree, m) for m in range(n)}, n
    # Any subset, in any order and with repeats, gives each index once.
    some = inclusion_proofs(LEAVES[:37], [36, 3, 3, 0, 17])
    assert sorted(some) == [0, 3, 17, 36]
    root = _naive_root(LEAVES[:37])
    for m, proof in some.items():
        assert verify_inclusion(LEAVES[m], m, 37, proof, root)
    assert inclusion_proofs(LEAVES[:5], []) == {}


def test_every_consistency_proof_verifies_and_wrong_ones_do_not() -> None:
    roots = [_naive_root(LEAVES[:n]) for n in range(N_MAX + 1)]
    for n in range(N_MAX + 1):
        for m in range(n + 1):
            proof = consistency_proof(LEAVES[:n], m)
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
            if 0 < m < n:
                bad = leaf_hash(b"forged")
                assert not verify_consistency(m, n, bad, roots[n], proof)
                assert not verify_consistency(m, n, roots[m], bad, proof)
                assert not verify_consistency(m, n, roots[m], roots[n], proof[:-1])
                assert not verify_consistency(m, n, roots[m], roots[n], [])
    assert not verify_consistency(3, 2, roots[3], roots[2], [])


def test_proofs_refuse_positions_outside_the_tree() -> None:
    with pytest.raises(MerkleError):
        inclusion_proof(LEAVES[:4], 4)
    with pytest.raises(MerkleError):
        inclusion_proofs(LEAVES[:4], [0, 4])
    with pytest.raises(MerkleError):
        inclusion_proofs(LEAVES[:4], [-1])
    with pytest.raises(MerkleError):
        consistency_proof(LEAVES[:4], 5)
    assert not verify_inclusion(LEAVES[0], 0, 0, [], root_hash([]))
