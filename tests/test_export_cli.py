"""`tunegguf export`: help is instant, user mistakes and broken files are one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from click.testing import CliRunner

from tunegguf.cli.export import export_group


def test_help_of_every_command_and_no_heavy_imports():
    code = (
        "import sys; from click.testing import CliRunner; from tunegguf.cli.export import export_group;"
        "r = CliRunner();"
        "codes = [r.invoke(export_group, a).exit_code for a in (['--help'], ['run', '--help'], ['verify', '--help'])];"
        "print(codes, [m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[0, 0, 0] []"


def test_verify_of_random_bytes_is_one_line_and_exit_1(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(np.random.default_rng(0).bytes(10_000))
    result = CliRunner().invoke(export_group, ["verify", str(junk)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: not a loadable GGUF: {junk}: not a readable GGUF file (no GGUF magic at the start)"
    ]


def test_user_mistakes_are_one_line_with_exit_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(export_group, ["run", "--base", "tiny-llama3", "--out", str(tmp_path), "--quants", "Q8_0,Q4_K_Z"])
    assert result.exit_code == 2 and result.output.startswith("error: --quants: export.quants: unknown quant type 'Q4_K_Z'")
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(export_group, ["verify", str(tmp_path / "absent.gguf")])
    assert result.exit_code == 2 and "no such GGUF file" in result.output
    result = runner.invoke(export_group, ["verify", str(tmp_path / "x.gguf"), "--base", "tiny-llama3"])
    assert result.exit_code == 2 and "--base and --merged go together" in result.output
    result = runner.invoke(export_group, ["run", "--set", "export.verify_max_tokens=0"])
    assert result.exit_code == 2 and "export.verify_max_tokens must be at least 1" in result.output
