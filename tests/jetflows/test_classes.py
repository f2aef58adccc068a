import pytest

from jetflows.classes import JET_TYPES, canonical_class, class_index


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("g", "g"),
        ("Gluon", "g"),
        ("quark", "q"),
        ("TOP", "t"),
        ("W", "w"),
        ("Z", "z"),
        (" t ", "t"),
    ],
)
def test_aliases(name, expected):
    assert canonical_class(name) == expected


def test_unknown_class_lists_valid_names():
    with pytest.raises(ValueError, match=r"g, q, t, w, z.*gluon, quark, top, W, Z"):
        canonical_class("higgs")


def test_class_index_follows_jetnet_order():
    from jetnet.datasets import JetNet

    assert list(JET_TYPES) == JetNet.JET_TYPES
    assert [class_index(c) for c in ("gluon", "top", "Z")] == [0, 2, 4]
