"""Checkpoint provenance: fingerprints name the model itself; old checkpoints warn; a crafted
pickle is refused without running it."""

import pickle

import pytest
import torch

from pipelines.run.checkpoints import (
    check_provenance,
    fingerprint,
    load_checkpoint,
    provenance,
    save_checkpoint,
)


def _state(seed):
    torch.manual_seed(seed)
    weights = {"layer.weight": torch.randn(4, 3), "layer.bias": torch.randn(4)}
    return {"kind": "jetflows.flow", "flow_config": {"transforms": 2}, "best_state_dict": weights}


def test_a_fingerprint_survives_saving_and_names_the_weights(tmp_path):
    a, b = _state(0), _state(1)
    path = save_checkpoint(tmp_path / "a.pt", {**a, "history": [{"loss": 1.0}]})
    assert fingerprint(load_checkpoint(path, "jetflows.flow")) == fingerprint(a)
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) != fingerprint({**a, "flow_config": {"transforms": 3}})


def test_provenance_is_checked_and_its_absence_said():
    first, other = _state(0), _state(1)
    model = {**_state(2), "provenance": provenance("t", **{"convae.pt": first})}
    check_provenance(model, "flow.pt", "t", **{"convae.pt": first})
    with pytest.raises(ValueError, match=r"flow\.pt is a model of class 't', not 'g'"):
        check_provenance(model, "flow.pt", "g", **{"convae.pt": first})
    with pytest.raises(ValueError, match=r"fitted on another convae\.pt"):
        check_provenance(model, "flow.pt", "t", **{"convae.pt": other})
    with pytest.raises(ValueError, match=r"old\.pt: records no class and inputs"):
        check_provenance(_state(3), "old.pt", "t", **{"convae.pt": first})


class _Payload:
    """Unpickling this runs a shell command (what a hostile "checkpoint" would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "flow.pt"
    torch.save({"kind": "jetflows.flow", "best_state_dict": {}, "x": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="refused unread"):
        load_checkpoint(path, "jetflows.flow")
    assert not marker.exists()
    # a bare pickle (not torch's zip format) is refused too, in one line (it was torch's
    # paragraph about weights_only, ending in a documentation link)
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="refused unread") as refused:
        load_checkpoint(path, "jetflows.flow")
    assert "\n" not in str(refused.value) and not marker.exists()
    # while a real checkpoint, with its optimizer, RNG state and history, still loads
    good = _state(0) | {"history": [{"epoch": 0, "seconds": 1.5}], "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "ok.pt", good)
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt", "jetflows.flow")["rng"], good["rng"])


def test_a_directory_in_a_checkpoints_place_is_named_as_such(tmp_path):
    (tmp_path / "flow.pt").mkdir()
    with pytest.raises(FileNotFoundError, match=r"flow\.pt: is a directory, not a checkpoint"):
        load_checkpoint(tmp_path / "flow.pt", "jetflows.flow")


def test_flipped_bytes_inside_a_tensor_are_caught(tmp_path):
    """A damaged flow.pt went unnoticed: the file still unpickles, only its numbers changed."""
    state = _state(0) | {"optimizer": {"state": {0: {"step": torch.tensor(3.0)}}}}
    path = save_checkpoint(tmp_path / "flow.pt", state)
    assert "content_sha256" not in load_checkpoint(path, "jetflows.flow")
    raw = bytearray(path.read_bytes())
    weights = state["best_state_dict"]["layer.weight"].numpy().tobytes()
    at = bytes(raw).index(weights[:8])  # the tensor's bytes sit verbatim in the zip
    raw[at + 3] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path, "jetflows.flow")


@pytest.mark.parametrize("content", ["text", "cut 20%", "cut 60%", "cut 95%", "empty"])
def test_junk_or_cut_short_checkpoints_are_one_line_naming_the_file(tmp_path, content):
    """Issue 39 #7, #8: a text file was a KeyError, a truncated one "[Errno 22] Invalid
    argument" naming no file: both exit 1 as bugs."""
    whole = save_checkpoint(tmp_path / "whole.pt", _state(0) | {"pad": torch.randn(20_000)})
    path = tmp_path / "flow.pt"
    if content == "text":
        path.write_text("hello world\n")
    elif content == "empty":
        path.write_bytes(b"")
    else:
        raw = whole.read_bytes()
        path.write_bytes(raw[: len(raw) * int(content.split()[1][:-1]) // 100])
    with pytest.raises(ValueError, match=r"flow\.pt: not a readable checkpoint") as err:
        load_checkpoint(path, "jetflows.flow")
    assert "\n" not in str(err.value)


def test_an_edited_record_is_caught_like_flipped_weights(tmp_path):
    """Issue 39 #1: the hash covered the tensors only; a sign flipped in a stored jet
    kinematics value sampled jets of pt -982 GeV with exit 0."""
    state = _state(0) | {"extra": {"jet_kinematics": [[1000.0, 0.1], [950.0, -0.3]]}}
    path = save_checkpoint(tmp_path / "flow.pt", state)
    assert load_checkpoint(path, "jetflows.flow")["extra"] == state["extra"]
    raw = torch.load(path, weights_only=False)
    raw["extra"]["jet_kinematics"][0][0] = -1000.0
    torch.save(raw, path)
    with pytest.raises(ValueError, match=r"flow\.pt: damaged or edited \(its configs, record"):
        load_checkpoint(path, "jetflows.flow")


def test_a_tensor_larger_than_its_stored_data_is_refused_before_any_allocation(tmp_path):
    """Issue 39 #2: a 64 KB file holding zeros(1).expand(20000, 20000) made the loader
    allocate 1.6 GB (3.3 GB in the probe) for the hash before checking anything."""
    path = tmp_path / "guide.pt"
    bomb = torch.zeros(1).expand(20_000, 20_000)
    torch.save({"kind": "jetflows.flow", "best_state_dict": {"w": bomb}}, path)
    assert path.stat().st_size < 10_000
    with pytest.raises(ValueError, match=r"tensor /best_state_dict/w of shape \(20000, 20000\)"):
        load_checkpoint(path, "jetflows.flow")
