"""`quals-fast score`: JSONL and line-file input, bad lines, resume after interruption."""
import json
import subprocess
import sys

import pytest

from quals_fast.cli import main

GOOD = [{"id": "a", "source": "the police said john smith was arrested in paris", "summary": "john smith was arrested"},
        {"id": "b", "source": "mary won the game in london", "summary": "mary lost the match in berlin"}]


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(args):
    return main(["score", "--no-progress", "--max-len", "16"] + [str(a) for a in args])


def read(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_jsonl_with_bad_lines(tmp_path, tiny_model_dir, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [json.dumps(GOOD[0]), "{not json", json.dumps({"source": "x"}),
                                              json.dumps({"source": "  ", "summary": "y"}), json.dumps(GOOD[1])])
    out = tmp_path / "out.jsonl"
    assert run(["--model", tiny_model_dir, "--input", src, "--output", out]) == 1
    recs = read(out)
    assert [r["line"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0]["id"] == "a" and "error" not in recs[0] and "pairs" in recs[0]
    assert "invalid JSON" in recs[1]["error"] and "summary" in recs[2]["error"] and "empty" in recs[3]["error"]
    assert recs[4]["id"] == "b" and "error" not in recs[4]
    err = capsys.readouterr().err
    assert "line 2" in err and "3 of 5 inputs failed" in err


def test_line_files_and_resume(tmp_path, tiny_model_dir):
    (tmp_path / "src.txt").write_text("\n".join(g["source"] for g in GOOD * 2) + "\n")
    (tmp_path / "sum.txt").write_text("\n".join(g["summary"] for g in GOOD * 2) + "\n")
    out = tmp_path / "out.jsonl"
    base = ["--model", tiny_model_dir, "--sources", tmp_path / "src.txt", "--summaries", tmp_path / "sum.txt",
            "--output", out, "--batch-size", "1"]
    assert run(base) == 0
    full = read(out)
    # Simulate an interruption: two records and a torn third line.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:10])
    assert run(base + ["--resume"]) == 0
    assert read(out) == full


def test_existing_output_is_not_clobbered(tmp_path, tiny_model_dir):
    out = tmp_path / "out.jsonl"
    out.write_text("{}\n")
    src = write_jsonl(tmp_path / "in.jsonl", [json.dumps(GOOD[0])])
    with pytest.raises(SystemExit, match="--resume"):
        run(["--model", tiny_model_dir, "--input", src, "--output", out])


def test_mismatched_line_files(tmp_path, tiny_model_dir):
    (tmp_path / "a.txt").write_text("x\ny\n")
    (tmp_path / "b.txt").write_text("x\n")
    with pytest.raises(SystemExit, match="2 lines"):
        run(["--model", tiny_model_dir, "--sources", tmp_path / "a.txt", "--summaries", tmp_path / "b.txt",
             "--output", tmp_path / "o.jsonl"])


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "quals_fast.cli", "score", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--num-beams", "--max-pairs", "--strict-cap", "--max-source-tokens", "--no-pair-score", "--resume"):
        assert flag in proc.stdout
