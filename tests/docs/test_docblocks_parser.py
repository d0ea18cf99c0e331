"""The docs harness reads blocks, directives, commands, shown output and syntax lines as documented."""

from __future__ import annotations

import pytest
from _docblocks import Block, blocks, expected_line, options_in, shell_steps

_MD = """# T

<!-- docs-test: skip (needs network) -->
```
torchsmith weights fetch torchvision:resnet50
```

<!-- docs-test: save-as s.yaml; run torchsmith build s.yaml --check -->
```yaml
chain: [{type: Linear, in_features: 2, out_features: 3}]
```

```bash
torchsmith zoo 'resnet*'      # a comment
torchrun --nproc_per_node=2 -m torchsmith train r.yaml
torchsmith inspect CKPT [--json] [--limit N]
torchsmith summary mlp --arg hidden=[64,32]
```

```
$ torchsmith doctor mlp
mlp: no problems found ...
```
"""


@pytest.fixture
def parsed(tmp_path):
    doc = tmp_path / "t.md"
    doc.write_text(_MD)
    return blocks(doc)


def test_blocks_and_directives(parsed):
    assert [b.lang for b in parsed] == ["", "yaml", "bash", ""]
    assert parsed[0].skip_reason == "needs network"
    assert parsed[1].save_as == ("s.yaml", "torchsmith build s.yaml --check")
    assert parsed[2].directive is None and parsed[2].line == 13


def test_shell_steps_classify_lines(parsed):
    steps = shell_steps(parsed[2])
    assert [s.kind for s in steps] == ["run", "skip", "syntax", "run"]  # [64,32] is a value, not syntax
    assert "torchrun" in steps[1].skip or "several processes" in steps[1].skip
    assert options_in(steps[2].command) == ("inspect", ["--json", "--limit"])
    (doctor,) = shell_steps(parsed[3])
    assert doctor.command == "torchsmith doctor mlp" and doctor.expect == ["mlp: no problems found ..."]
    assert expected_line(doctor.expect[0]) == "mlp: no problems found"


def test_output_before_any_command_is_an_error(tmp_path):
    block = Block(tmp_path / "x.md", 1, "", "some output\n$ torchsmith zoo\n", None)
    with pytest.raises(ValueError, match="output before"):
        shell_steps(block)
