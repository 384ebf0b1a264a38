import subprocess
import sys

import pytest
import torch

from volseg.errors import ModelError
from volseg.model.checkpoint import load_checkpoint, save_checkpoint


def test_checkpoint_round_trip_weights_only(tmp_path):
    net = torch.nn.Conv3d(1, 2, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    net(torch.randn(1, 1, 5, 5, 5)).sum().backward()
    opt.step()
    p = save_checkpoint(tmp_path / "ck.pt", {"network": net.state_dict(), "optimizer": opt.state_dict(),
                                             "epoch": 3, "plan_hash": "abc", "score_ema": None})
    raw = torch.load(p, weights_only=True)  # loads without unpickling arbitrary objects
    assert raw["epoch"] == 3
    state = load_checkpoint(p, plan_hash="abc")
    assert torch.equal(state["network"]["weight"], net.weight)
    with pytest.raises(ModelError, match="another plan"):
        load_checkpoint(p, plan_hash="other")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ck.pt"]


def test_damaged_checkpoint_is_reported(tmp_path):
    p = tmp_path / "ck.pt"
    p.write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="ck.pt: cannot read checkpoint"):
        load_checkpoint(p)


class _Hostile:
    def __reduce__(self):
        return (print, ("code ran",))


def test_hostile_pickle_is_refused_with_a_whole_sentence(tmp_path, capsys):
    p = tmp_path / "checkpoint_final.pt"
    torch.save({"network": _Hostile()}, p)
    with pytest.raises(ModelError) as e:
        load_checkpoint(p)
    assert "code ran" not in capsys.readouterr().out
    msg = str(e.value)
    assert "checkpoint_final.pt: cannot read checkpoint: it holds pickled Python objects" in msg
    assert msg.endswith("(it names print)") and "\n" not in msg


def test_long_read_errors_are_cut_at_a_word():
    from volseg.model.checkpoint import read_failure

    msg = read_failure(RuntimeError("word " * 100))
    assert msg.endswith("word …)") and len(msg) < 220


def _imported(modules: str) -> set[str]:
    code = f"import sys, {modules}; print(' '.join(m for m in sys.modules if m.startswith('volseg.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_inference_does_not_import_training_and_training_does_not_import_inference():
    """The model folder is what both share (volseg.model); neither imports the other."""
    inference = _imported("volseg.inference.predictor, volseg.inference.sliding_window, volseg.model")
    assert not {m for m in inference if m.startswith("volseg.training")}, inference
    training = _imported("volseg.training.run, volseg.training.build, volseg.training.trainer, volseg.model")
    assert not {m for m in training if m.startswith("volseg.inference")}, training
