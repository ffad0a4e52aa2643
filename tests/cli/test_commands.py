"""The CLI contract scripts rely on: JSON keys, exit codes, comparisons."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from retrec.cli import app

runner = CliRunner()


def _json(args: list[str]) -> dict:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _one(args: list[str]) -> dict:
    """The one system of a ``--json`` report: the same shape for one system as for several."""
    out = _json(args)
    (system,) = out["systems"]
    assert out.get("comparisons", []) == []
    return system


def _flat(output: str) -> str:
    """Terminal output without the error box's borders and line wraps."""
    return " ".join(output.replace("│", " ").split())


def test_eval_json_contract_and_run_file(tiny_data: Path, tmp_path: Path) -> None:
    out = _one(["eval", "--data", str(tiny_data), "--retriever", "bm25", "--json",
                 "--run-out", str(tmp_path / "bm25.run")])
    for key in ("nDCG@10", "R@100", "RR@10", "R@1000", "AP", "queries"):
        assert key in out
    assert out["queries"] == 30 and 0.0 < out["nDCG@10"] <= 1.0
    again = _one(["eval", "--data", str(tiny_data), "--run", str(tmp_path / "bm25.run"), "--json"])
    assert again["nDCG@10"] == out["nDCG@10"] and again["AP"] == out["AP"]


def test_eval_with_only_data_runs_the_default_hybrid(tiny_data: Path, tmp_path: Path) -> None:
    """No retriever named: BM25 and zero-shot dense fused by untuned RRF, the product default (the explicit
    hybrid, to the digit); a --model that no index kind encodes with is refused, as is no --data at all."""
    default = _one(["eval", "--data", str(tiny_data), "--json"])
    assert default["retriever"] == "hybrid" and default["components"] == ["bm25", "dense"]
    assert default["fusion"]["method"] == "rrf" and default["fusion"]["weights"] is None
    explicit = _one(["eval", "--data", str(tiny_data), "--retriever", "hybrid", "--component", "bm25",
                      "--component", "dense", "--json"])
    assert explicit["nDCG@10"] == default["nDCG@10"]
    refused = runner.invoke(app, ["eval", "--data", str(tiny_data), "--model", str(tiny_data)])
    assert refused.exit_code == 2 and "not a retrec bundle" in _flat(refused.output)
    assert runner.invoke(app, ["eval"]).exit_code == 2


def test_compare_reports_paired_test_and_win_tie_loss(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "bm25.run"
    _json(["eval", "--data", str(tiny_data), "--retriever", "bm25", "--json", "--run-out", str(run)])
    worse = tmp_path / "worse.run"
    lines = run.read_text().splitlines()
    kept = [ln for ln in lines if int(ln.split()[3]) > 10]  # drop every query's top 10

    worse.write_text("\n".join(kept) + "\n")
    out = _json(["eval", "--data", str(tiny_data), "--run", str(run), "--run", str(worse), "--compare", "--json"])
    (cmp,) = out["comparisons"]
    assert cmp["baseline"] == "bm25.run" and cmp["system"] == "worse.run"
    assert cmp["losses"] > 3 * cmp["wins"] and cmp["wins"] + cmp["ties"] + cmp["losses"] == 30
    assert cmp["delta"] < 0 and 0.0 <= cmp["p_value"] < 0.05
    table = runner.invoke(app, ["eval", "--data", str(tiny_data), "--run", str(run), "--run", str(worse),
                                "--compare"])
    assert table.exit_code == 0 and "paired comparison" in table.stdout and "worse.run" in table.stdout


def test_run_sharing_no_query_with_the_qrels_exits_non_zero(tiny_data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.run"
    bad.write_text("nosuchquery Q0 D00001 1 1.0 x\n")
    result = runner.invoke(app, ["eval", "--data", str(tiny_data), "--run", str(bad), "--json"])
    assert result.exit_code == 2
    assert "query ids do not match" in result.output and "nosuchquery" in result.output


def test_bad_inputs_are_clear_errors(tiny_data: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--data", str(tmp_path / "nope"), "--retriever", "bm25"])
    assert result.exit_code == 2 and "dataset folder not found" in result.output
    result = runner.invoke(app, ["eval", "--data", str(tiny_data), "--retriever", "nosuch"])
    flat = _flat(result.output)
    assert result.exit_code == 2 and "'nosuch' is not one of" in flat and "'bm25', 'dense'" in flat
    result = runner.invoke(app, ["eval-rec", "--data", str(tiny_data), "--model", "markov", "--protocol", "x"])
    assert result.exit_code == 2 and "'x' is not one of 'full', 'pop100', 'uni100'" in _flat(result.output)


def test_eval_rec_json_contract(tiny_data: Path) -> None:
    for protocol in ("full", "pop100", "uni100"):
        out = _json(["eval-rec", "--data", str(tiny_data), "--model", "markov", "--protocol", protocol, "--json"])
        assert out["protocol"] == protocol
        (row,) = out["systems"]  # one shape for one model or several
        assert row["model"] == "markov" and 0.0 <= row["NDCG@10"] <= row["HR@10"] <= 1.0 and row["users"] == 150
    two = _json(["eval-rec", "--data", str(tiny_data), "--model", "markov", "--model", "popularity", "--json"])
    assert [row["model"] for row in two["systems"]] == ["markov", "popularity"]


def test_bm25_bundle_via_cli(tiny_data: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bm25"
    assert runner.invoke(app, ["index", "bm25", "--data", str(tiny_data), "--out", str(bundle)]).exit_code == 0
    built = _one(["eval", "--data", str(tiny_data), "--retriever", "bm25", "--json"])
    loaded = _one(["eval", "--data", str(tiny_data), "--index", str(bundle), "--json"])
    assert loaded["nDCG@10"] == built["nDCG@10"] and loaded["retriever"] == "bm25"
    result = runner.invoke(app, ["eval", "--data", str(tiny_data), "--retriever", "bm25", "--model", str(bundle)])
    assert result.exit_code == 2 and "bm25 takes no model" in result.output and "--index" in result.output
    result = runner.invoke(app, ["index", "bm25", "--data", str(tiny_data), "--out", str(tmp_path / "v"),
                                 "--variant", "int8"])
    assert result.exit_code == 2 and "bm25 takes no model" in result.output and not (tmp_path / "v").exists()
    other = tmp_path / "other"
    assert runner.invoke(app, ["index", "index/bm25", "--data", str(tiny_data), "--out", str(other), "--k1", "1.2",
                               "--b", "0.75"]).exit_code == 0
    assert _one(["eval", "--data", str(tiny_data), "--index", str(other), "--json"])["nDCG@10"] != built["nDCG@10"]
    both = _json(["eval", "--data", str(tiny_data), "--index", str(bundle), "--index", str(other), "--compare",
                  "--json"])
    assert [x["retriever"] for x in both["systems"]] == ["bm25", "other"]
    assert both["comparisons"][0]["system"] == "other"
    (bundle / "doc_ids.json").write_text("[]")
    result = runner.invoke(app, ["eval", "--data", str(tiny_data), "--index", str(bundle)])
    assert result.exit_code == 2 and "checksum mismatch for doc_ids.json" in result.output


def test_train_options_come_from_the_config_dataclasses(monkeypatch, tmp_path: Path) -> None:
    import dataclasses

    import retrec.pipelines.train.seq.bert4rec as b4r
    import retrec.pipelines.train.text.dense as dense
    from retrec.pipelines.train.seq.config import BERT4RecTrainConfig
    from retrec.pipelines.train.text.config import DenseTrainConfig

    seen: dict = {}

    def fake_train(data: Path, out: Path, cfg: object, *, resume: bool, command: str) -> Path:
        seen.update(cfg=cfg, resume=resume)
        return out

    monkeypatch.setattr(b4r, "train_bert4rec", fake_train)
    monkeypatch.setattr(dense, "train_dense", fake_train)
    base = ["--data", str(tmp_path), "--out", str(tmp_path / "o")]
    for command, config in (("bert4rec", BERT4RecTrainConfig), ("dense", DenseTrainConfig)):
        help_text = runner.invoke(app, ["train", command, "--help"], env={"COLUMNS": "200"}).stdout
        for f in dataclasses.fields(config):
            flag = f.metadata.get("flag", "--" + f.name.replace("_", "-")).split("/")[0]
            assert flag in help_text, flag
        assert runner.invoke(app, ["train", command, *base]).exit_code == 0
        assert seen == {"cfg": config(), "resume": False}  # the CLI defaults are the dataclass defaults
    help_text = runner.invoke(app, ["train", "dense", "--help"], env={"COLUMNS": "200"}).stdout
    for choices in ("[cosine|dot]", "[topic|random]", "[balanced|bm25]", "[constant|cosine|linear]"):
        assert choices in help_text
    assert "[sampled|ce|gbce]" in runner.invoke(app, ["train", "bert4rec", "--help"], env={"COLUMNS": "200"}).stdout
    # The defaults scripts rely on, pinned.
    b4r = BERT4RecTrainConfig()
    assert (DenseTrainConfig().max_minutes, DenseTrainConfig().epochs, b4r.max_minutes) == (30.0, 6, 55.0)
    assert (b4r.max_len, b4r.mask_prob, b4r.patience) == (None, None, 100)  # from data

    result = runner.invoke(app, ["train", "bert4rec", *base, "--max-len", "20", "--mask-prob", "0.6", "--resume",
                                 "--loss", "sampled", "--lr-schedule", "cosine"])
    assert result.exit_code == 0, result.output
    expected = BERT4RecTrainConfig(max_len=20, mask_prob=0.6, loss="sampled", lr_schedule="cosine")
    assert seen == {"cfg": expected, "resume": True}
    result = runner.invoke(app, ["train", "dense", *base, "--no-int8", "--max-minutes", "5", "--base-model", "m"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == DenseTrainConfig(quantize=False, max_minutes=5.0, base_model="m")
    result = runner.invoke(app, ["train", "bert4rec", *base, "--loss", "focal"])
    assert result.exit_code == 2 and "unknown loss 'focal'; choose one of sampled, ce, gbce" in result.output
