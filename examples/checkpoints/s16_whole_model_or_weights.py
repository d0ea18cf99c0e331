"""S16: save and load the whole model or only its weights, as .pkl / .pt / .pth / .safetensors.

The seeds save either the whole model (``torch.save(model, "model.pkl")``: a pickle that needs the
model's code to load and can run arbitrary code) or its weights (``torch.save(model.state_dict(),
"model.pth")``). torchsmith reads both safely, and its own ``save`` records how the model was built,
so ``load_model`` rebuilds it with no pickle at all.

Run:  python examples/checkpoints/s16_whole_model_or_weights.py [OUTDIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import torchsmith


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = torchsmith.create_model("mlp").eval()  # the seeds' 784-256-10 MLP
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)

    # 1. Weights only, the seeds' way, in each extension: torchsmith reads them from the bytes.
    for ext in ("pkl", "pt", "pth"):
        torch.save(model.state_dict(), out / f"weights.{ext}")
        fresh = torchsmith.create_model("mlp").eval()
        report = torchsmith.load_weights(fresh, out / f"weights.{ext}")
        assert torch.equal(fresh(x), expected), report
        print(f"weights.{ext}: {torchsmith.inspect_checkpoint(out / f'weights.{ext}')['format']}, loaded")

    # 2. The whole model, the seeds' way: rescued without trusting the pickle (tensors only)...
    torch.save(model, out / "whole.pkl")
    ckpt = torchsmith.read_checkpoint(out / "whole.pkl")
    print("whole.pkl:", ckpt.notes[0])
    # ...or unpickled whole, when you trust the file and have its code.
    whole = torchsmith.load_model(out / "whole.pkl", trust_pickle=True).eval()
    assert torch.equal(whole(x), expected)

    # 3. The torchsmith way: safetensors, checksummed, rebuilt from metadata with no pickle.
    path = torchsmith.save(model, out / "mlp.safetensors")
    rebuilt = torchsmith.load_model(path).eval()
    assert torch.allclose(rebuilt(x), expected, rtol=1e-5, atol=1e-6)  # weights mapped from the file
    print(f"{path.name}: verified {torchsmith.verify_checkpoint(path)['checks']}, rebuilt without pickle")

    # Trap 2: torch.save(model.state_dict, ...) without the call pickles a bound method.
    torch.save(model.state_dict, out / "trap2.pth")
    print("trap2.pth:", torchsmith.read_checkpoint(out / "trap2.pth").notes[0][:90], "...")
    try:
        torchsmith.save(model.state_dict, out / "refused.pt")
    except torchsmith.InputError as e:
        print("save(model.state_dict) refused:", str(e)[:80], "...")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
