"""QAGen training: MiniLM -> BART warm start, target format, recipe (tiny run, exact resume), CLI."""
import argparse
import dataclasses
import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad"


def _import_training():
    """The training modules need nothing from quals_fast/__init__.py (which loads the compiled
    core); import them by path when the package itself cannot be imported yet."""
    try:
        from quals_fast.training import qagen, qagen_data, warmstart

        return warmstart, qagen_data, qagen
    except Exception:
        name = "_quals_fast_training"
        if name not in sys.modules:
            pkg_dir = ROOT / "quals_fast" / "training"
            spec = importlib.util.spec_from_file_location(
                name, pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
            )
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        return tuple(importlib.import_module(f"{name}.{m}") for m in ("warmstart", "qagen_data", "qagen"))


warmstart, qagen_data, qagen = _import_training()


def _minilm_dir():
    try:
        d = warmstart.default_minilm_dir()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    if not (d / "model.safetensors").is_file():
        pytest.skip(f"no MiniLM weights in {d}")
    return d


@pytest.fixture(scope="module")
def warm():
    torch.set_num_threads(1)
    model, tok = warmstart.build_warmstart_model(_minilm_dir(), decoder_layers=2, seed=0)
    return model, tok


def _needs_data():
    if not (DATA / qagen_data.VALID_FILE).is_file():
        pytest.skip(f"SQuAD data not found in {DATA}")


# --- warm start ------------------------------------------------------------------------------

def test_encoder_is_minilm(warm):
    from transformers import BertModel

    model, tok = warm
    texts = [
        "The cat sat on the mat.",
        "Paris is the capital of France; about 2.1 million people live there, according to INSEE.",
        "Short.",
    ]
    srcs = [warmstart.encode_source(tok, t) for t in texts]
    n = max(map(len, srcs))
    ids = torch.tensor([s + [warmstart.PAD_ID] * (n - len(s)) for s in srcs])
    mask = (ids != warmstart.PAD_ID).long()
    bert = BertModel.from_pretrained(str(_minilm_dir()), local_files_only=True, add_pooling_layer=False).eval()
    with torch.no_grad():
        ours = model.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].bool()
        # BART hard-codes LayerNorm eps 1e-5 (BERT: 1e-12); that alone moves outputs by <~1e-3.
        assert (ours - ref).abs().masked_select(m).max() < 5e-3
        for mod in bert.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.eps = 1e-5
        ref = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (ours - ref).abs().masked_select(m).max() < 1e-4


def test_warmstart_config_and_weights(warm):
    model, tok = warm
    cfg = model.config
    assert type(model).__name__ == "BartForConditionalGeneration"
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.decoder_start_token_id) == (0, 101, 102, 102)
    assert cfg.forced_bos_token_id is None and cfg.forced_eos_token_id is None
    assert not cfg.scale_embedding and cfg.activation_function == "gelu"
    assert cfg.vocab_size == len(tok) == 30523
    assert cfg.qagen_separator_token == "[qsep]" and cfg.qagen_separator == " [qsep]"
    sep = cfg.qagen_separator_token_id
    assert tok.convert_tokens_to_ids("[qsep]") == sep == 30522
    shared = model.model.shared.weight
    assert model.lm_head.weight.data_ptr() == shared.data_ptr()
    assert model.model.decoder.embed_tokens.weight.data_ptr() == shared.data_ptr()
    assert torch.allclose(shared[sep], shared[:sep].mean(0), atol=1e-6)
    assert torch.count_nonzero(model.final_logits_bias) == 0
    assert cfg.qagen_warmstart["cross_attention_init"] == "self"
    for layer in model.model.decoder.layers:
        assert torch.equal(layer.encoder_attn.k_proj.weight, layer.self_attn.k_proj.weight)
        assert torch.equal(layer.encoder_attn_layer_norm.weight, layer.self_attn_layer_norm.weight)
        # A copy, not a shared tensor: the two attentions must train independently.
        assert layer.encoder_attn.k_proj.weight.data_ptr() != layer.self_attn.k_proj.weight.data_ptr()
    for p in model.parameters():
        assert torch.isfinite(p).all()
    assert warmstart.default_decoder_source_layers(3, 6) == [0, 3, 5]
    assert warmstart.default_decoder_source_layers(2, 6) == [0, 5]
    assert warmstart.default_decoder_source_layers(6, 6) == list(range(6))


def test_fresh_cross_attention_option():
    model, _ = warmstart.build_warmstart_model(_minilm_dir(), decoder_layers=1, seed=0, cross_attention_init="normal")
    again, _ = warmstart.build_warmstart_model(_minilm_dir(), decoder_layers=1, seed=0, cross_attention_init="normal")
    layer = model.model.decoder.layers[0]
    assert torch.equal(layer.encoder_attn_layer_norm.weight, torch.ones(384))
    assert 0.015 < float(layer.encoder_attn.q_proj.weight.detach().std()) < 0.025
    assert torch.equal(layer.encoder_attn.q_proj.weight, again.model.decoder.layers[0].encoder_attn.q_proj.weight)
    with pytest.raises(ValueError, match="cross_attention_init"):
        warmstart.build_warmstart_model(_minilm_dir(), decoder_layers=1, cross_attention_init="zeros")


def test_source_format(warm):
    _, tok = warm
    ids = warmstart.encode_source(tok, "Hello world. " * 400, max_source_len=512)
    assert len(ids) == 512 and ids[-1] == warmstart.EOS_ID and warmstart.BOS_ID not in ids
    assert warmstart.encode_source(tok, "a b c", 3)[-1] == warmstart.EOS_ID


def test_separator_round_trip(warm, tmp_path):
    _needs_data()
    model, tok = warm
    sep = model.config.qagen_separator
    sep_id = model.config.qagen_separator_token_id
    # The added token is found in raw text too, whatever its case (uncased normaliser).
    assert tok("Who? [QSEP] him", add_special_tokens=False).input_ids.count(sep_id) == 1
    warmstart.save_model_folder(model, tok, tmp_path / "m")
    from transformers import AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    assert tok2.convert_tokens_to_ids("[qsep]") == sep_id
    n = 0
    for context, qas in qagen_data.read_squad(DATA / qagen_data.VALID_FILE)[:20]:
        ctx = tok.decode(tok(context, add_special_tokens=False).input_ids, skip_special_tokens=True).lower()
        for q, a in qas:
            ids = warmstart.encode_target(tok, q, a, sep_id)
            text = tok2.decode(ids, skip_special_tokens=True)
            assert text.count(sep) == 1
            dq, da = text.split(sep, 1)
            ans = tok.decode(tok(a, add_special_tokens=False).input_ids, skip_special_tokens=True)
            assert da == " " + ans
            assert ans.lower() in ctx
            assert warmstart.split_qa(text, sep) == (dq.strip(), ans.strip())
            n += 1
    assert n > 50


def test_collate_layout(warm):
    _needs_data()
    _, tok = warm
    paras = qagen_data.build_paragraphs([DATA / qagen_data.VALID_FILE], tok, 30522, 64, 32, max_paragraphs=3)
    items = [(0, 0), (0, 1), (2, 0)]
    b = qagen_data.collate(paras, items)
    assert b["input_ids"].shape[0] == 2 and b["source_index"].tolist() == [0, 0, 1]
    t = paras[0].targets[1]
    assert b["decoder_input_ids"][1, : len(t) + 1].tolist() == [102] + t
    assert b["labels"][1, : len(t) + 1].tolist() == t + [102]
    assert (b["labels"][1, len(t) + 1 :] == -100).all()
    assert all(p.source[-1] == 102 and len(p.source) <= 64 for p in paras)
    # Seeded order: same seed, same batches; other epoch, other order.
    assert qagen_data.epoch_order(paras, 1, 0) == qagen_data.epoch_order(paras, 1, 0)


def test_sentence_spans():
    text = 'He won in 1990. "It was fine," she said! Then what? 2001 came. ok end'
    spans = qagen_data.sentence_spans(text)
    assert [text[a:b] for a, b in spans] == [
        "He won in 1990.", '"It was fine," she said!', "Then what?", "2001 came. ok end"]
    assert qagen_data.sentence_spans("no end") == [(0, 6)]


def test_short_paragraphs_hold_each_question_once_with_its_answer(warm):
    _needs_data()
    _, tok = warm
    files = [DATA / qagen_data.VALID_FILE]
    full = qagen_data.build_paragraphs(files, tok, 30522, 512, 64, max_paragraphs=12)
    one = qagen_data.build_short_paragraphs(files, tok, 30522, 512, 64, 12, max_sentences=1, seed=0)
    three = qagen_data.build_short_paragraphs(files, tok, 30522, 512, 64, 12, max_sentences=3, seed=0)
    n_questions = sum(len(p.targets) for p in full)
    for short in (one, three):
        targets = sorted(t for p in short for t in p.targets)
        assert targets == sorted(t for p in full for t in p.targets)  # every question, once
        for p in short:
            assert p.source[-1] == 102
            src = tok.decode(p.source[:-1])
            for t in p.targets:
                assert tok.decode(t[t.index(30522) + 1:]) in src
    mean_len = lambda ps: sum(len(p.source) for p in ps) / len(ps)
    assert mean_len(one) < mean_len(three) < mean_len(full)
    assert len(one) <= n_questions
    again = qagen_data.build_short_paragraphs(files, tok, 30522, 512, 64, 12, max_sentences=3, seed=0)
    assert [(p.source, p.targets) for p in again] == [(p.source, p.targets) for p in three]


# --- recipe ----------------------------------------------------------------------------------

def _opts(out, **kw):
    base = dict(
        output_dir=str(out), data_dir=str(DATA), steps=6, batch_size=4, lr=5e-4, warmup_steps=0,
        decoder_layers=1, max_source_len=48, max_target_len=24, eval_every=3, save_every=3,
        val_examples=8, val_batch_size=8, threads=1, train_limit=3, log_every=1, progress=False,
        device="cpu", seed=123, cross_attention_init="normal",
    )
    base.update(kw)
    return qagen.TrainQAGenOptions(**base)


def _ckpt_state(out, step):
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "checkpoints" / f"step-{step}" / "model.safetensors"))


def test_tiny_run_learns_and_resumes_exactly(tmp_path):
    _needs_data()
    _minilm_dir()
    a = tmp_path / "a"
    summary = qagen.train_qagen(_opts(a))
    assert summary["step"] == 6
    log = [json.loads(line) for line in (a / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert len(losses) == 6 and losses[-1] < losses[0]
    vals = [r["val_loss"] for r in log if r["event"] == "validation"]
    assert len(vals) == 2 and all(v == v for v in vals)

    best = a / "best"
    cfg = json.loads((best / "config.json").read_text())
    assert cfg["qagen_separator"] == " [qsep]" and cfg["dtype"] == "float16"
    assert (best / "tokenizer.json").is_file() and (best / "model.safetensors").stat().st_size < 100e6
    from transformers import BartForConditionalGeneration

    m = BartForConditionalGeneration.from_pretrained(str(best), local_files_only=True)
    assert m.config.decoder_layers == 1

    b = tmp_path / "b"
    first = qagen.train_qagen(_opts(b, stop_after_steps=3))
    assert first["step"] == 3
    with pytest.raises(ValueError, match="resume"):
        qagen.train_qagen(_opts(b))  # checkpoints exist: refuse to silently restart
    with pytest.raises(ValueError, match="different training options"):
        qagen.train_qagen(_opts(b, resume=True, lr=1e-3))
    # A run folder written before an option existed resumes with that option's default.
    opts_file = b / "options.json"
    written = json.loads(opts_file.read_text())
    del written["short_context_sentences"]
    opts_file.write_text(json.dumps(written))
    qagen.train_qagen(_opts(b, resume=True))
    sa, sb = _ckpt_state(a, 6), _ckpt_state(b, 6)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_time_limit_stops_with_a_checkpoint_and_best(tmp_path):
    _needs_data()
    out = tmp_path / "t"
    summary = qagen.train_qagen(_opts(out, max_minutes=1e-6, eval_every=0, save_every=0))
    assert summary["step"] == 1 and summary["best_dir"]
    assert (out / "checkpoints" / "step-1" / "model.safetensors").is_file()
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert "time_limit" in events and events[-1] == "stopped"
    assert qagen.train_qagen(_opts(out, resume=True))["step"] == 6  # the time limit is not part of the trajectory


def test_short_contexts_add_training_inputs(tmp_path, warm):
    _needs_data()
    _minilm_dir()
    out = tmp_path / "s"
    qagen.train_qagen(_opts(out, steps=2, eval_every=2, save_every=2, short_context_sentences=2))
    start = next(json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if '"start"' in l)
    paras = qagen_data.build_paragraphs([DATA / f for f in qagen_data.TRAIN_FILES], warm[1], 30522, 48, 24, 3)
    plain = sum(len(p.targets) for p in paras)
    # The same 3 paragraphs' questions once more, with short inputs (the located ones).
    assert plain < start["train_questions"] <= 2 * plain
    from quals_fast.training import qg

    with pytest.raises(ValueError, match="short_context_sentences"):
        qagen.train_qagen(_opts(tmp_path / "q", short_context_sentences=2), qg.QG_RECIPE)


@pytest.mark.parametrize("sentence, expected", [
    ("Knute Rockne became head coach in 1918.", ("who became head coach in 1918?", "Knute Rockne")),
    ("In 1918, Knute Rockne became head coach.", None),          # the subject does not open it
    ("The new head coach won the title in 1918.", None),         # the subject is no named entity
    ("Rockne won.", None),                                       # too little left to ask about
])
def test_subject_question(nlp, sentence, expected):
    assert qagen_data.subject_question(nlp(sentence)) == expected


def test_subject_questions_add_training_inputs(tmp_path, warm, nlp):
    _needs_data()
    _minilm_dir()
    files = [DATA / f for f in qagen_data.TRAIN_FILES]
    extra = qagen_data.build_subject_paragraphs(files, warm[1], 30522, 48, 24, 20, nlp=nlp)
    paras = qagen_data.build_paragraphs(files, warm[1], 30522, 48, 24, 20)
    assert extra and all(p.source in [q.source for q in paras] for p in extra)  # the same inputs
    assert all(t.count(30522) == 1 for p in extra for t in p.targets)
    out = tmp_path / "subj"
    qagen.train_qagen(_opts(out, steps=2, eval_every=2, save_every=2, train_limit=20, subject_questions=True))
    start = next(json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if '"start"' in l)
    assert start["train_questions"] == sum(len(p.targets) for p in paras + extra)
    from quals_fast.training import qg

    with pytest.raises(ValueError, match="subject_questions"):
        qagen.train_qagen(_opts(tmp_path / "q", subject_questions=True), qg.QG_RECIPE)


@pytest.mark.parametrize("sentence, expected", [
    ("Bukayo Saka scored the winner as Arsenal beat Chelsea at the Emirates Stadium.",
     [("who scored the winner as Arsenal beat Chelsea at the Emirates Stadium?", "Bukayo Saka"),
      ("who beat Chelsea at the Emirates Stadium?", "Arsenal"),
      ("who did Arsenal beat at the Emirates Stadium?", "Chelsea")]),
    ("In Berlin, Macron proposed a joint budget and Merkel said she was open to the idea.",
     [("who proposed a joint budget?", "Macron"), ("who said she was open to the idea?", "Merkel")]),
    ("They killed Sattar in March.", []),                         # a pronoun subject names no one
    ("The new coach won the title in 1918.", []),                 # no named entity in either role
    ('Smith said "we will win" on Monday.', []),                  # a cut-up quotation
])
def test_role_questions(nlp, sentence, expected):
    assert qagen_data.role_questions(nlp(sentence)) == expected


def test_news_questions_add_training_inputs(tmp_path, warm, nlp):
    _needs_data()
    _minilm_dir()
    news = tmp_path / "news.jsonl"
    news.write_text(json.dumps({"id": 0, "source": "Arsenal beat Chelsea on Sunday. Saka scored the winner.",
                                "summary": "Chelsea beat Arsenal on Sunday."}) + "\n", encoding="utf-8")
    extra = qagen_data.build_news_role_paragraphs(news, warm[1], 30522, 48, 24, nlp=nlp)
    decoded = {warm[1].decode(p.source[:-1]): sorted(warm[1].decode(t) for t in p.targets) for p in extra}
    # The article with every question, each sentence with its own, the summary with its own only.
    assert decoded == {
        "arsenal beat chelsea on sunday. saka scored the winner.": [
            "who beat chelsea on sunday? [qsep] arsenal", "who did arsenal beat on sunday? [qsep] chelsea",
            "who scored the winner? [qsep] saka"],
        "arsenal beat chelsea on sunday.": [
            "who beat chelsea on sunday? [qsep] arsenal", "who did arsenal beat on sunday? [qsep] chelsea"],
        "saka scored the winner.": ["who scored the winner? [qsep] saka"],
        "chelsea beat arsenal on sunday.": [
            "who beat arsenal on sunday? [qsep] chelsea", "who did chelsea beat on sunday? [qsep] arsenal"],
    }
    out = tmp_path / "news"
    qagen.train_qagen(_opts(out, steps=2, eval_every=2, save_every=2, news_questions=str(news), news_copies=2))
    start = next(json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if '"start"' in l)
    paras = qagen_data.build_paragraphs([DATA / f for f in qagen_data.TRAIN_FILES], warm[1], 30522, 48, 24, 3)
    assert start["train_questions"] == sum(len(p.targets) for p in paras) + 2 * 8
    with pytest.raises(ValueError, match="news_questions"):
        qagen.TrainQAGenOptions(output_dir=str(out), steps=1, news_questions=str(tmp_path / "missing")).validate()
    news.write_text('{"source": "no summary"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="news.jsonl:1"):
        qagen_data.build_news_role_paragraphs(news, warm[1], 30522, 48, 24, nlp=nlp)


def test_init_from_continues_a_trained_model(tmp_path):
    _needs_data()
    _minilm_dir()
    a = tmp_path / "a"
    qagen.train_qagen(_opts(a, steps=3, eval_every=3, save_every=3))
    best = a / "best"
    model, tok = qagen.QAGEN_RECIPE.build_model(_opts(tmp_path / "c", init_from=str(best)))
    from safetensors.torch import load_file

    saved = load_file(str(best / "model.safetensors"))
    assert next(model.parameters()).dtype == torch.float32
    for k, v in saved.items():  # fp16 on disk, fp32 to train: same values
        assert torch.equal(model.state_dict()[k], v.float()), k
    assert tok.convert_tokens_to_ids("[qsep]") == model.config.qagen_separator_token_id
    summary = qagen.train_qagen(_opts(tmp_path / "c", steps=2, eval_every=2, save_every=2, init_from=str(best)))
    assert summary["step"] == 2 and (tmp_path / "c" / "best" / "config.json").is_file()


def test_init_from_deepens_the_decoder_with_copies_of_its_layers(tmp_path):
    _needs_data()
    _minilm_dir()
    a = tmp_path / "a"
    qagen.train_qagen(_opts(a, steps=2, eval_every=2, save_every=2, decoder_layers=2))
    best = a / "best"
    small, _ = warmstart.load_qagen_for_training(best)
    model, _ = qagen.QAGEN_RECIPE.build_model(_opts(tmp_path / "c", init_from=str(best), decoder_layers=5))
    assert model.config.decoder_layers == 5
    deep = model.state_dict()
    prefix = "model.decoder.layers."
    for k, v in small.state_dict().items():
        assert torch.equal(deep[k], v), k  # everything the small model has stays as it was
        if k.startswith(prefix):
            i, rest = k[len(prefix):].split(".", 1)
            for j in range(int(i) + 2, 5, 2):
                assert torch.equal(deep[f"{prefix}{j}.{rest}"], v), (j, rest)
    layers = model.model.decoder.layers
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(5))

    model.eval()
    src = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():  # the per-layer generation cache gives what full recomputation gives
        cached = model.generate(src, max_new_tokens=4, min_new_tokens=4, num_beams=1, do_sample=False, use_cache=True)
        uncached = model.generate(src, max_new_tokens=4, min_new_tokens=4, num_beams=1, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)

    qagen.train_qagen(_opts(tmp_path / "c", steps=2, eval_every=2, save_every=2, init_from=str(best), decoder_layers=5))
    cfg = json.loads((tmp_path / "c" / "best" / "config.json").read_text())
    assert cfg["decoder_layers"] == 5 and cfg["qagen_deepened_from"] == 2
    with pytest.raises(ValueError, match="never cut"):
        qagen.QAGEN_RECIPE.build_model(_opts(tmp_path / "d", init_from=str(best), decoder_layers=1))


def test_with_source_bos_prefixes_within_the_length_limit():
    eos = warmstart.EOS_ID
    paras = [qagen_data.Paragraph([5, 6, 7, eos], [[1, 2]]), qagen_data.Paragraph([5, eos], [[3]])]
    out = qagen_data.with_source_bos(paras, warmstart.BOS_ID, 4)
    assert [p.source for p in out] == [[warmstart.BOS_ID, 5, 6, eos], [warmstart.BOS_ID, 5, eos]]
    assert [p.targets for p in out] == [[[1, 2]], [[3]]]


def test_source_bos_is_recorded_kept_and_used_by_the_scorer(tmp_path):
    _needs_data()
    _minilm_dir()
    from quals_fast.qagen import QAGen

    plain, bos = tmp_path / "plain", tmp_path / "bos"
    qagen.train_qagen(_opts(plain, steps=2, eval_every=2, save_every=2))
    qagen.train_qagen(_opts(bos, steps=2, eval_every=2, save_every=2, init_from=str(plain / "best"), source_bos=True))
    cfg = json.loads((bos / "best" / "config.json").read_text())
    assert cfg["qagen_source_bos"] is True and cfg["qagen_input_format"] == warmstart.SOURCE_BOS_FORMAT
    assert "qagen_source_bos" not in json.loads((plain / "best" / "config.json").read_text())

    q, q_plain = QAGen.load(bos / "best"), QAGen.load(plain / "best")
    ids, _ = q.encode_text("Pacquiao lost on points.", 512)
    assert ids == [warmstart.BOS_ID] + q_plain.encode_text("Pacquiao lost on points.", 512)[0]
    ids, truncated = q.encode_text("word " * 600, 10_000)
    assert truncated and len(ids) == 512 and ids[0] == warmstart.BOS_ID and ids[-1] == warmstart.EOS_ID

    from quals_fast.training import average  # an average validates as its run did: with the bos

    model, tok = warmstart.load_qagen_for_training(bos / "best")
    logged = [json.loads(line) for line in (bos / "log.jsonl").read_text().splitlines()]
    val = next(r["val_loss"] for r in logged if r["event"] == "validation")
    assert average.validation_loss(model, tok, DATA, 8, max_source_len=48, max_target_len=24)[0] == pytest.approx(val, rel=1e-3)

    again = tmp_path / "again"  # a model trained with it keeps it without the flag
    qagen.train_qagen(_opts(again, steps=1, eval_every=1, save_every=1, init_from=str(bos / "best")))
    assert json.loads((again / "best" / "config.json").read_text())["qagen_source_bos"] is True


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(init_from="/nonexistent"), "init_from"),
        (dict(steps=None), "exactly one of steps or epochs"),
        (dict(epochs=1.0), "exactly one of steps or epochs"),
        (dict(steps=0), "steps must be"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0.0), "lr"),
        (dict(max_source_len=513), "max_source_len"),
        (dict(dtype="int8"), "dtype"),
        (dict(device="tpu"), "device"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(short_context_sentences=-1), "short_context_sentences"),
        (dict(renamed_copies=-1), "renamed_copies"),
        (dict(answer_loss_weight=0.0), "answer_loss_weight"),
        (dict(repetition_unlikelihood=-0.5), "repetition_unlikelihood"),
        (dict(repetition_unlikelihood=float("inf")), "repetition_unlikelihood"),
        (dict(swap_contrast_weight=-1.0), "swap_contrast_weight"),
        (dict(swap_contrast_kind="both"), "swap_contrast_kind"),
        (dict(swap_margin=0.0), "swap_margin"),
        (dict(swap_pairs_per_step=0), "swap_pairs_per_step"),
        (dict(max_minutes=0.0), "max_minutes"),
        (dict(max_minutes=float("nan")), "max_minutes"),
        (dict(cross_attention_init="zeros"), "cross_attention_init"),
        (dict(data_dir="/nonexistent"), "lacks"),
    ],
)
def test_bad_options_raise(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        _opts(tmp_path, **kw).validate()


def test_cli_flags_match_options(tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    qagen.register_cli(sub)
    args = parser.parse_args(
        ["train-qagen", "--output-dir", str(tmp_path), "--epochs", "1.5", "--dtype", "bf16", "--resume", "--no-progress"]
    )
    assert args.func is qagen._run_cli
    names = {f.name for f in dataclasses.fields(qagen.TrainQAGenOptions)}
    assert names <= set(vars(args))
    opts = qagen.TrainQAGenOptions(**{n: getattr(args, n) for n in names})
    assert opts.epochs == 1.5 and opts.dtype == "bf16" and opts.resume and not opts.progress and opts.steps is None
    with pytest.raises(SystemExit):
        parser.parse_args(["train-qagen", "--output-dir", "x", "--dtype", "fp8"])


def test_answer_weights_cover_the_answer_and_final_eos():
    sep = 30522
    labels = torch.tensor([[7, 8, sep, 9, 10, 102, -100], [7, sep, 9, 102, -100, -100, -100]])
    w = qagen_data.answer_weights(labels, 3.0, sep)
    assert w.tolist() == [[1, 1, 1, 3, 3, 3, 0], [1, 1, 3, 3, 0, 0, 0]]
    assert qagen_data.answer_weights(labels, 1.0, sep).tolist() == (labels != -100).float().tolist()


def test_answer_loss_weight_changes_training_not_validation(tmp_path):
    _needs_data()
    _minilm_dir()
    opts = _opts(tmp_path / "w", answer_loss_weight=4.0)
    model, tok = qagen.QAGEN_RECIPE.build_model(opts)
    model.eval()  # no dropout: the two losses differ by their weights only
    sep = model.config.qagen_separator_token_id
    paras = qagen_data.build_paragraphs([DATA / qagen_data.VALID_FILE], tok, sep, 48, 24, 2)
    items = [(0, 0), (1, 0)]
    plain, n = qagen.qagen_loss(model, qagen._collate_qagen(paras, items, None), "cpu")
    weighted, n2 = qagen.qagen_loss(model, qagen._collate_qagen(paras, items, opts), "cpu")
    assert n == n2 and not torch.isclose(plain, weighted)
    assert qagen.evaluate(model, paras, items, 8, torch.device("cpu"), "fp32", options=opts) == \
        pytest.approx(qagen.evaluate(model, paras, items, 8, torch.device("cpu"), "fp32", options=None))


def test_repetition_candidates_are_earlier_distinct_tokens():
    sep, eos = 30522, 102
    labels = torch.tensor([[5, 6, 5, sep, 6, 7, eos, -100]])
    cand = qagen.repetition_candidates(labels, (sep, eos))[0]
    got = {t: sorted(labels[0, j].item() for j in range(labels.shape[1]) if cand[t, j]) for t in range(labels.shape[1])}
    # t=2 (gold 5): 6 only, as 5 is the gold token; t=4 (gold 6): 5 once, never the separator
    assert got == {0: [], 1: [5], 2: [6], 3: [5, 6], 4: [5], 5: [5, 6], 6: [5, 6, 7], 7: [5, 6, 7]}


def test_repetition_unlikelihood_penalises_repeats_only():
    labels = torch.tensor([[5, 6, 5, 102]])
    keep = labels != -100
    logits = torch.zeros(4, 110)
    logits[1, 5] = 20.0  # position 1 all but certain of 5, which position 0 already emitted
    ul = qagen.repetition_unlikelihood(logits, labels, keep, (102,))
    assert ul > 3.0  # -log(1 - p(5)) ~ 20 nats over 4 positions, plus small terms elsewhere
    logits[1, 5] = 0.0
    logits[1, 6] = 20.0  # now certain of the gold token: nothing to repeat at that position
    assert qagen.repetition_unlikelihood(logits, labels, keep, (102,)) < 0.1


def test_repetition_unlikelihood_changes_training_not_validation(tmp_path):
    _needs_data()
    _minilm_dir()
    opts = _opts(tmp_path / "u", repetition_unlikelihood=1.0)
    model, tok = qagen.QAGEN_RECIPE.build_model(opts)
    model.eval()
    sep = model.config.qagen_separator_token_id
    paras = qagen_data.build_paragraphs([DATA / qagen_data.VALID_FILE], tok, sep, 48, 24, 2)
    items = [(0, 0), (1, 0)]
    plain, n = qagen.qagen_loss(model, qagen._collate_qagen(paras, items, None), "cpu")
    with_ul, n2 = qagen.qagen_loss(model, qagen._collate_qagen(paras, items, opts), "cpu")
    assert n == n2 and with_ul > plain
    assert qagen.evaluate(model, paras, items, 8, torch.device("cpu"), "fp32", options=opts) == \
        pytest.approx(qagen.evaluate(model, paras, items, 8, torch.device("cpu"), "fp32", options=None))


def test_answer_alignment_marks_every_occurrence_of_the_answer():
    sep, eos, pad = 30522, 102, 0
    # row 0: answer [7, 8] stands twice in source 0; row 1: answer [9] is not in source 1
    labels = torch.tensor([[4, 5, sep, 7, 8, eos], [4, sep, 9, eos, -100, -100]])
    input_ids = torch.tensor([[101, 7, 8, 3, 7, 8, eos], [101, 3, 3, eos, pad, pad, pad]])
    got = qagen.answer_alignment(labels, input_ids, torch.tensor([0, 1]), sep, eos)
    assert got.shape == (2, 6, 7)
    assert sorted(map(tuple, got[0].nonzero().tolist())) == [(3, 1), (3, 4), (4, 2), (4, 5)]
    assert not got[1].any()


def test_alignment_loss_pulls_one_head_onto_the_answer(tmp_path):
    _needs_data()
    _minilm_dir()
    opts = _opts(tmp_path / "al", alignment_loss_weight=1.0)
    model, tok = qagen.QAGEN_RECIPE.build_model(opts)
    sep = model.config.qagen_separator_token_id
    paras = qagen_data.build_paragraphs([DATA / qagen_data.VALID_FILE], tok, sep, 512, 24, 2)
    items = [(0, 0), (1, 0)]
    batch = qagen._collate_qagen(paras, items, opts)
    target = qagen.answer_alignment(batch["labels"], batch["input_ids"], batch["source_index"], sep, model.config.eos_token_id)
    assert target.any(-1).any(-1).all()  # SQuAD answers are spans of their paragraphs
    attn = model.model.decoder.layers[-1].encoder_attn
    opt = torch.optim.Adam(list(attn.q_proj.parameters()) + list(attn.k_proj.parameters()), lr=1e-2)
    model.eval()  # no dropout: the loss must fall from the head's projections alone

    def align():
        capture = {}
        qagen._target_logits(model, batch, capture)
        return qagen.alignment_loss(model, capture, target)

    first = align()
    with_al, n = qagen.qagen_loss(model, batch, "cpu")
    plain, n2 = qagen.qagen_loss(model, qagen._collate_qagen(paras, items, None), "cpu")
    assert n == n2 and float(with_al.detach()) == pytest.approx(float(plain.detach()) + float(first.detach()), rel=1e-4)
    for _ in range(30):
        opt.zero_grad()
        loss = align()
        loss.backward()
        opt.step()
    assert float(align().detach()) < 0.5 * float(first.detach())
    assert qagen.evaluate(model, paras, items, 8, torch.device("cpu"), "fp32", options=opts) == \
        pytest.approx(qagen.evaluate(model, paras, items, 8, torch.device("cpu"), "fp32", options=None))


def test_encoder_cache_gives_the_encoder_states(warm):
    model, tok = warm
    model.train()  # the cache must compute without dropout whatever mode the model is in
    enc = model.model.encoder
    rows = [tok("the cat sat on the mat")["input_ids"], tok("a dog")["input_ids"]]
    ids = torch.full((2, len(rows[0])), 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    cache = qagen.EncoderCache()
    got = cache(enc, ids, mask)
    assert len(cache) == 2 and enc.training
    enc.eval()
    with torch.no_grad():
        want = enc(input_ids=ids, attention_mask=mask).last_hidden_state
    model.eval()
    assert torch.allclose(got * mask[..., None], want * mask[..., None], atol=1e-5)
    # The same inputs again, the other way round and with more padding: read back, not recomputed.
    again = cache(enc, torch.cat([ids.flip(0), torch.zeros(2, 3, dtype=torch.long)], 1),
                  torch.cat([mask.flip(0), torch.zeros(2, 3, dtype=torch.long)], 1))
    assert len(cache) == 2 and torch.equal(again[:, : ids.shape[1]], got.flip(0))


def test_frozen_encoder_trains_the_decoder_only_and_resumes_exactly(tmp_path):
    _needs_data()
    _minilm_dir()
    a = tmp_path / "a"
    qagen.train_qagen(_opts(a, freeze_encoder=True))
    start = next(json.loads(l) for l in (a / "log.jsonl").read_text().splitlines() if '"start"' in l)
    assert 0 < start["trained_params"] < start["params"]
    s0, s6 = _ckpt_state(a, 3), _ckpt_state(a, 6)
    model, _ = qagen.QAGEN_RECIPE.build_model(_opts(a))
    init = {k: v for k, v in model.state_dict().items()}
    frozen = [k for k in s6 if k.startswith(("model.encoder.", "model.shared."))]
    trained = [k for k in s6 if k.startswith("model.decoder.layers.")]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(s6[k], init[k]), k
    assert any(not torch.equal(s6[k], s0[k]) for k in trained)
    b = tmp_path / "b"
    qagen.train_qagen(_opts(b, freeze_encoder=True, stop_after_steps=3))
    with pytest.raises(ValueError, match="different training options"):
        qagen.train_qagen(_opts(b, resume=True))
    qagen.train_qagen(_opts(b, freeze_encoder=True, resume=True))
    sb = _ckpt_state(b, 6)
    for k in s6:
        assert torch.equal(s6[k], sb[k]), k
    from quals_fast.training import qa

    with pytest.raises(ValueError, match="freeze_encoder"):
        qagen.train_qagen(_opts(tmp_path / "qa", freeze_encoder=True), qa.QA_RECIPE)


def test_frozen_embeddings_keep_every_word_row_while_the_layers_train(tmp_path):
    _needs_data()
    _minilm_dir()
    a = tmp_path / "a"
    qagen.train_qagen(_opts(a, freeze_embeddings=True))
    model, _ = qagen.QAGEN_RECIPE.build_model(_opts(a))
    s6 = _ckpt_state(a, 6)
    # save_model stores the tied word embeddings once, under one of their names
    word = next(k for k, v in s6.items() if v.shape == model.get_input_embeddings().weight.shape)
    assert torch.equal(s6[word], model.state_dict()["model.shared.weight"])
    assert not torch.equal(s6["model.encoder.layers.0.fc1.weight"], model.state_dict()["model.encoder.layers.0.fc1.weight"])
    # Without the option the rows of tokens no target contains move too: the drift it prevents.
    b = tmp_path / "b"
    qagen.train_qagen(_opts(b))
    tok = warmstart.load_tokenizer(_minilm_dir())
    seen = {t for p in qagen_data.build_paragraphs([DATA / f for f in qagen_data.TRAIN_FILES], tok, len(tok) - 1, 48, 24, 3)
            for tgt in p.targets + [p.source] for t in tgt}
    unseen = torch.tensor(sorted(set(range(1000, 30000)) - seen))
    moved = _ckpt_state(b, 6)[word][unseen] - model.state_dict()["model.shared.weight"][unseen]
    assert moved.abs().amax(1).min() > 0


def test_frozen_rare_embeddings_keep_exactly_the_rarely_targeted_rows_and_resume_exactly(tmp_path):
    _needs_data()
    _minilm_dir()
    from quals_fast.training import embeddings

    a = tmp_path / "a"
    qagen.train_qagen(_opts(a, freeze_rare_embeddings=3, weight_decay=0.1))
    model, tok = qagen.QAGEN_RECIPE.build_model(_opts(a))
    init = model.state_dict()["model.shared.weight"]
    s6 = _ckpt_state(a, 6)
    word = next(k for k, v in s6.items() if v.shape == init.shape)
    sep = model.config.qagen_separator_token_id
    paras = qagen_data.build_paragraphs([DATA / f for f in qagen_data.TRAIN_FILES], tok, sep, 48, 24, 3)
    counts = embeddings.target_counts(paras, init.shape[0])
    frozen = embeddings.targeted_fewer_than(counts, 3, init.shape[0], set(tok.all_special_ids) | {sep})
    start = next(json.loads(l) for l in (a / "log.jsonl").read_text().splitlines() if '"start"' in l)
    assert start["frozen_embedding_rows"] == frozen.numel() > 25000
    # weight decay 0.1 would move every frozen row if restore() did not undo it
    assert torch.equal(s6[word][frozen], init[frozen])
    often = (counts[:init.shape[0]] >= 3).nonzero().flatten()
    assert sep not in frozen.tolist() and tok.pad_token_id not in frozen.tolist()
    assert (s6[word][often] - init[often]).abs().amax(1).min() > 0
    b = tmp_path / "b"
    qagen.train_qagen(_opts(b, freeze_rare_embeddings=3, weight_decay=0.1, stop_after_steps=3))
    with pytest.raises(ValueError, match="different training options"):
        qagen.train_qagen(_opts(b, freeze_rare_embeddings=2, weight_decay=0.1, resume=True))
    qagen.train_qagen(_opts(b, freeze_rare_embeddings=3, weight_decay=0.1, resume=True))
    sb = _ckpt_state(b, 6)
    for k in s6:
        assert torch.equal(s6[k], sb[k]), k
    with pytest.raises(ValueError, match="freeze_rare_embeddings cannot be combined"):
        _opts(tmp_path / "c", freeze_rare_embeddings=3, freeze_embeddings=True).validate()
    with pytest.raises(ValueError, match="freeze_rare_embeddings must be >= 0"):
        _opts(tmp_path / "c", freeze_rare_embeddings=-1).validate()


def test_restore_embeddings_puts_back_exactly_the_never_targeted_rows(tmp_path):
    _needs_data()
    minilm = _minilm_dir()
    from transformers import AutoModel

    from quals_fast.cli import main as cli_main
    from quals_fast.training import embeddings
    from quals_fast.training.warmstart import load_qagen_for_training

    run = tmp_path / "run"
    qagen.train_qagen(_opts(run, steps=3))
    out = tmp_path / "restored"
    cli_main(["restore-embeddings", "--model", str(run / "best"), "--output-dir", str(out), "--data-dir", str(DATA),
              "--minilm-dir", str(minilm), "--val-examples", "8"])
    before, tok = load_qagen_for_training(str(run / "best"))
    after, _ = load_qagen_for_training(str(out))
    ref = AutoModel.from_pretrained(str(minilm), local_files_only=True).embeddings.word_embeddings.weight.detach()
    sep = before.config.qagen_separator_token_id
    counts = embeddings.target_token_counts(tok, sep, DATA)
    e0, e1 = before.get_input_embeddings().weight.detach(), after.get_input_embeddings().weight.detach()
    rows = embeddings.targeted_fewer_than(counts, 1, ref.shape[0], set(tok.all_special_ids) | {sep})
    keep = torch.ones(e0.shape[0], dtype=torch.bool)
    keep[rows] = False
    assert 10000 < rows.numel() < 20000 and counts[sep] > 0
    assert torch.allclose(e1[rows], ref[rows].half().float())
    assert torch.allclose(e1[keep], e0[keep])
    assert after.get_output_embeddings().weight.data_ptr() == after.get_input_embeddings().weight.data_ptr()
    info = json.loads((out / "training_info.json").read_text())
    assert info["restored_rows"] == rows.numel() and info["val_questions"] == 8
    with pytest.raises(SystemExit, match="is the input"):
        cli_main(["restore-embeddings", "--model", str(out), "--output-dir", str(out), "--data-dir", str(DATA)])


# --- role-swap contrast (--swap-contrast-weight) ------------------------------------------------

SWAP_CONTEXT = ("Floyd Mayweather beat Manny Pacquiao on points in Las Vegas on Saturday. "
                "Apple agreed to buy Shazam for about $400 million on Monday.")


def _squad_file(path, context, qas):
    items = [{"question": q, "answers": [{"text": a, "answer_start": context.index(a)}]} for q, a in qas]
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": items}]}]}))
    return path


def test_swap_contrast_pairs_exchange_the_answer_entity(tmp_path, warm, nlp):
    tok = warm[1]
    f = _squad_file(tmp_path / "s.json", SWAP_CONTEXT, [
        ("Who beat Manny Pacquiao?", "Floyd Mayweather"),
        ("How much did Apple pay?", "about $400 million"),   # no named entity of a swappable kind
        ("Where was the fight?", "Las Vegas"),               # no other place in its sentence
        ("Who agreed to buy Shazam?", "Apple"),
    ])
    pairs = qagen_data.build_swap_contrast([f], tok, 30522, 128, 32, nlp=nlp)
    texts = [tok.decode(p.source[:-1]) for p in pairs]
    targets = [tok.decode(p.targets[0]) for p in pairs]
    assert len(pairs) == 4 and all(p.source[-1] == warmstart.EOS_ID for p in pairs)
    assert pairs[0].source == pairs[2].source == tok(SWAP_CONTEXT, add_special_tokens=False).input_ids + [warmstart.EOS_ID]
    assert texts[1].startswith("manny pacquiao beat floyd mayweather on points")
    assert "shazam agreed to buy apple for" in texts[3] and texts[3].startswith("floyd mayweather beat manny")
    assert targets[0] == targets[1] == "who beat manny pacquiao? [qsep] floyd mayweather"
    assert targets[2] == targets[3] == "who agreed to buy shazam? [qsep] apple"


def test_answer_contrast_pairs_keep_the_paragraph_and_swap_the_answer(tmp_path, warm, nlp):
    tok = warm[1]
    f = _squad_file(tmp_path / "s.json", SWAP_CONTEXT, [
        ("Who lost on points?", "Manny Pacquiao"),
        ("Who beat Manny Pacquiao?", "Floyd Mayweather"),    # the only other person is in the question
        ("Where was the fight?", "Las Vegas"),               # no other place in its sentence
        ("Which company is the buyer?", "Apple"),
    ])
    pairs = qagen_data.build_swap_contrast([f], tok, 30522, 128, 32, nlp=nlp, kind="answer")
    targets = [tok.decode(p.targets[0]) for p in pairs]
    same = tok(SWAP_CONTEXT, add_special_tokens=False).input_ids + [warmstart.EOS_ID]
    assert len(pairs) == 4 and all(p.source == same for p in pairs)
    assert targets == ["who lost on points? [qsep] manny pacquiao", "who lost on points? [qsep] floyd mayweather",
                       "which company is the buyer? [qsep] apple", "which company is the buyer? [qsep] shazam"]
    with pytest.raises(ValueError, match="kind"):
        qagen_data.build_swap_contrast([f], tok, 30522, 128, 32, nlp=nlp, kind="question")


def test_distractor_pairs_take_entities_of_the_answers_kind_from_the_whole_paragraph(tmp_path, warm, nlp):
    tok = warm[1]
    f = _squad_file(tmp_path / "s.json", SWAP_CONTEXT, [
        ("Who lost on points?", "Manny Pacquiao"),           # one other person, same sentence
        ("Who beat Manny Pacquiao?", "Floyd Mayweather"),    # the only other person is in the question
        ("Which company is the buyer?", "Apple"),            # Shazam, and nothing further
    ])
    pairs = qagen_data.build_swap_contrast([f], tok, 30522, 128, 32, nlp=nlp, kind="distractor")
    targets = [tok.decode(p.targets[0]) for p in pairs]
    same = tok(SWAP_CONTEXT, add_special_tokens=False).input_ids + [warmstart.EOS_ID]
    assert all(p.source == same for p in pairs)
    assert targets[:2] == ["who lost on points? [qsep] manny pacquiao", "who lost on points? [qsep] floyd mayweather"]
    assert not any(t.endswith("[qsep] manny pacquiao") for t in targets[2:])   # the question names him
    assert targets[-2:] == ["which company is the buyer? [qsep] apple", "which company is the buyer? [qsep] shazam"]


def test_distractors_are_distinct_names_nearest_first_and_capped():
    class E(_Ent):
        def __init__(self, text, label, start):
            super().__init__(text, label)
            self.start_char, self.end_char = start, start + len(text)

    a = E("Paris", "GPE", 50)
    ents = [E("Rome", "GPE", 0), E("Lyon", "GPE", 40), E("paris", "GPE", 70), E("Oslo", "GPE", 90),
            E("Nice", "GPE", 58), E("May", "DATE", 52), a]
    got = qagen_data._distractors(a, ents, "Which city hosted the Nice summit?", 50, 55)
    assert [b.text for b in got] == ["Lyon", "Oslo"][: qagen_data.DISTRACTORS_PER_QUESTION]


# --- renamed copies (--renamed-copies) ----------------------------------------------------------

class _Ent:
    def __init__(self, text, label):
        self.text, self.label_ = text, label


def test_renaming_is_consistent_and_follows_the_surname():
    context = "Manny Pacquiao lost to Floyd Mayweather in Las Vegas. Pacquiao said he was hurt."
    ents = [_Ent("Manny Pacquiao", "PERSON"), _Ent("Floyd Mayweather", "PERSON"), _Ent("Las Vegas", "GPE"),
            _Ent("Pacquiao", "PERSON")]
    pool = {("PERSON", True): ["Serena Williams", "Andy Murray"], ("GPE", True): ["New York"]}
    mapping = qagen_data.rename_entities(context, ents, pool, np.random.default_rng(0))
    assert sorted(mapping) == ["Floyd Mayweather", "Las Vegas", "Manny Pacquiao", "Mayweather", "Pacquiao"]
    assert {mapping["Manny Pacquiao"], mapping["Floyd Mayweather"]} == {"Serena Williams", "Andy Murray"}
    assert mapping["Pacquiao"] == mapping["Manny Pacquiao"].split()[-1]
    text, question = qagen_data.apply_renaming([context, "Who did Pacquiao lose to?"], mapping)
    assert "Pacquiao" not in text and "Mayweather" not in text and "New York" in text
    assert text.count(mapping["Pacquiao"]) == 2 and mapping["Pacquiao"] in question
    # No name of the pool left that the paragraph lacks: nothing to rename.
    assert qagen_data.rename_entities("Serena Williams met Andy Murray.", ents[:2], {("PERSON", True): ["Serena Williams"]},
                                      np.random.default_rng(0)) == {}


def test_renamed_copies_keep_the_questions_the_renaming_touches(tmp_path, warm, nlp):
    tok = warm[1]
    other = "Serena Williams beat Venus Williams at Wimbledon. Microsoft bought LinkedIn in 2016."
    data = {"data": [{"paragraphs": [
        {"context": c, "qas": [{"question": q, "answers": [{"text": a, "answer_start": c.index(a)}]} for q, a in qas]}
        for c, qas in [(SWAP_CONTEXT, [("Who beat Manny Pacquiao?", "Floyd Mayweather"),
                                       ("How much did it cost?", "about $400 million")]),
                       (other, [("Who bought LinkedIn?", "Microsoft")])]]}]}
    f = tmp_path / "s.json"
    f.write_text(json.dumps(data))
    paras = qagen_data.build_renamed_paragraphs([f], tok, 30522, 128, 32, copies=2, seed=3, nlp=nlp)
    assert paras == qagen_data.build_renamed_paragraphs([f], tok, 30522, 128, 32, copies=2, seed=3, nlp=nlp)
    first = [p for p in paras if "$ 400 million" in tok.decode(p.source)]
    assert len(first) == 2  # one per copy; the question without a name is not repeated
    for p in first:
        text, (target,) = tok.decode(p.source[:-1]), [tok.decode(t) for t in p.targets]
        assert "mayweather" not in text and "pacquiao" not in text
        question, answer = target.split(" [qsep] ")
        assert answer in text and "pacquiao" not in question and answer != "floyd mayweather"
    with pytest.raises(ValueError, match="copies"):
        qagen_data.build_renamed_paragraphs([f], tok, 30522, 128, 32, copies=0, nlp=nlp)


def test_renamed_copies_join_the_training_questions(tmp_path, nlp):
    _needs_data()
    _minilm_dir()
    starts = []
    for name, copies in (("plain", 0), ("renamed", 1)):
        qagen.train_qagen(_opts(tmp_path / name, steps=1, eval_every=0, save_every=0, train_limit=20, renamed_copies=copies))
        log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        starts.append(next(r for r in log if r["event"] == "start"))
    assert starts[1]["train_questions"] > starts[0]["train_questions"] and starts[1]["val_questions"] == starts[0]["val_questions"]
    from quals_fast.training import qg

    with pytest.raises(ValueError, match="renamed_copies"):
        qagen.train_qagen(_opts(tmp_path / "q", renamed_copies=1), qg.QG_RECIPE)


# --- entity infilling (--entity-infilling) ------------------------------------------------------

class _Span:
    def __init__(self, context, text, label, nth=0):
        start = -1
        for _ in range(nth + 1):
            start = context.index(text, start + 1)
        self.text, self.label_, self.start_char, self.end_char = text, label, start, start + len(text)


def test_infilling_masks_the_names_the_paragraph_repeats():
    context = "Floyd Mayweather beat Manny Pacquiao in Las Vegas. Pacquiao said Mayweather was faster in 2015."
    second = qagen_data.sentence_spans(context)[1]
    ents = [_Span(context, "Floyd Mayweather", "PERSON"), _Span(context, "Manny Pacquiao", "PERSON"),
            _Span(context, "Las Vegas", "GPE"), _Span(context, "Pacquiao", "PERSON", nth=1),
            _Span(context, "Mayweather", "PERSON", nth=1), _Span(context, "2015", "DATE")]
    masked = qagen_data.mask_recoverable_entities(context, second, ents)
    # Both names stand in the first sentence too; the date is not a role and stays.
    assert masked == "Floyd Mayweather beat Manny Pacquiao in Las Vegas. [MASK] said [MASK] was faster in 2015."
    # The first sentence's full names stand nowhere else (a surname alone does not tell the
    # first name): no example.
    first = qagen_data.sentence_spans(context)[0]
    assert qagen_data.mask_recoverable_entities(context, first, ents) is None


def test_infilling_paragraphs_target_the_sentence(tmp_path, warm, nlp):
    tok = warm[1]
    context = SWAP_CONTEXT + " Pacquiao said that Mayweather was the better fighter on the night."
    f = tmp_path / "s.json"
    _squad_file(f, context, [("Who won?", "Floyd Mayweather")])
    paras = qagen_data.build_infilling_paragraphs([f], tok, 30522, 256, 64, nlp=nlp)
    assert paras
    sentences = [context[a:b] for a, b in qagen_data.sentence_spans(context)]
    for p in paras:
        (target,) = p.targets
        assert 30522 not in target and p.source[-1] == qagen_data.EOS_ID
        assert p.source[0] == tok.convert_tokens_to_ids(qagen_data.INFILL_MARKER) != tok.unk_token_id
        source = tok.decode(p.source[1:-1])
        assert "[MASK]" in source and tok.decode(target) not in source
        assert tok.decode(target) in [tok.decode(tok(s, add_special_tokens=False).input_ids) for s in sentences]


def test_entity_infilling_joins_the_training_questions(tmp_path, nlp):
    _needs_data()
    _minilm_dir()
    starts = []
    for name, on in (("plain", False), ("infill", True)):
        qagen.train_qagen(_opts(tmp_path / name, steps=1, eval_every=0, save_every=0, train_limit=20, entity_infilling=on))
        log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        starts.append(next(r for r in log if r["event"] == "start"))
    assert starts[1]["train_questions"] > starts[0]["train_questions"] and starts[1]["val_questions"] == starts[0]["val_questions"]
    from quals_fast.training import qg

    with pytest.raises(ValueError, match="entity_infilling"):
        qagen.train_qagen(_opts(tmp_path / "q", entity_infilling=True), qg.QG_RECIPE)


def test_swap_contrast_loss_is_the_per_token_gap(warm, tmp_path, nlp):
    model, tok = warm
    model.eval()
    f = _squad_file(tmp_path / "s.json", SWAP_CONTEXT, [("Who beat Manny Pacquiao?", "Floyd Mayweather"),
                                                        ("Who agreed to buy Shazam?", "Apple")])
    pairs = qagen_data.build_swap_contrast([f], tok, 30522, 128, 32, nlp=nlp)
    items = [(i, 0) for i in range(4)]
    with torch.no_grad():
        hinge, gaps = qagen.swap_contrast_loss(model, qagen_data.collate(pairs, items), "cpu", margin=0.5)
        mean_ll = []
        for i in range(4):
            total, n = qagen.qagen_loss(model, qagen_data.collate(pairs, [(i, 0)]), "cpu", reduction="sum")
            mean_ll.append(-float(total) / n)
    want = [mean_ll[0] - mean_ll[1], mean_ll[2] - mean_ll[3]]
    assert gaps.tolist() == pytest.approx(want, abs=1e-4)
    assert float(hinge) == pytest.approx(sum(max(0.0, 0.5 - g) for g in want) / 2, abs=1e-4)
    model.train()


def test_contrast_items_are_seeded_pairs():
    a = qagen.contrast_items(50, 4, seed=3, step=7)
    assert a == qagen.contrast_items(50, 4, seed=3, step=7)
    assert a != qagen.contrast_items(50, 4, seed=3, step=8)
    assert len(a) == 8 and all(a[i][0] % 2 == 0 and a[i + 1][0] == a[i][0] + 1 for i in range(0, 8, 2))
    assert len(qagen.contrast_items(2, 4, seed=3, step=0)) == 4  # fewer pairs than asked: all of them


def test_swap_contrast_run_logs_gaps(tmp_path, nlp):
    _needs_data()
    _minilm_dir()
    out = tmp_path / "c"
    qagen.train_qagen(_opts(out, steps=2, eval_every=2, save_every=2, train_limit=40, swap_contrast_weight=1.0,
                            swap_pairs_per_step=2))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    start = next(r for r in log if r["event"] == "start")
    assert start["swap_pairs"] > 0 and start["val_swap_pairs"] > 0
    assert all("swap_gap" in r for r in log if r["event"] == "train")
    val = next(r for r in log if r["event"] == "validation")
    assert 0 <= val["val_swap_right"] <= 1 and val["val_swap_gap"] == val["val_swap_gap"]
    from quals_fast.training import qg

    with pytest.raises(ValueError, match="swap_contrast_weight"):
        qagen.train_qagen(_opts(tmp_path / "q", swap_contrast_weight=1.0), qg.QG_RECIPE)


# --- checkpoint averaging (average-qagen) --------------------------------------------------------

@pytest.fixture(scope="module")
def four_step_run(tmp_path_factory):
    _needs_data()
    _minilm_dir()
    run = tmp_path_factory.mktemp("avg") / "run"
    qagen.train_qagen(_opts(run, steps=4, eval_every=2, save_every=2))
    yield run
    shutil.rmtree(run.parent, ignore_errors=True)  # module-scoped dirs otherwise live until the session ends


def test_average_is_the_mean_of_its_inputs(tmp_path, four_step_run):
    from safetensors.torch import load_file

    from quals_fast.training import average

    run = four_step_run
    inputs = [run / "best", run / "checkpoints" / "step-2", run / "checkpoints" / "step-4"]
    out = tmp_path / "avg"
    info = average.average_qagen(inputs, out, data_dir=DATA, val_examples=8)
    saved = load_file(str(out / "model.safetensors"))
    stored = [load_file(str(p / "model.safetensors")) for p in inputs]
    name = "model.decoder.layers.0.fc1.weight"
    mean = sum(s[name].float() for s in stored) / 3
    assert saved[name].dtype == torch.float16
    assert torch.allclose(saved[name].float(), mean, atol=1e-3)
    assert not torch.equal(stored[1][name], stored[2][name])  # the steps differ, so the test means something
    recorded = json.loads((out / "training_info.json").read_text())
    assert recorded["averaged_from"] == [str(p) for p in inputs] and recorded["val_questions"] == 8
    assert info["val_loss"] == recorded["val_loss"] and 0 < info["val_loss"] < 20
    from quals_fast.bench_cli import _state

    assert _state(out).startswith("trained: weight average of 3 checkpoints")
    # The folder is a model like any other: it loads and validates to the recorded loss.
    model, tok = warmstart.load_qagen_for_training(out)
    assert average.validation_loss(model, tok, DATA, 8)[0] == pytest.approx(info["val_loss"], rel=1e-3)


def test_average_refuses_bad_inputs(tmp_path, four_step_run, warm):
    from quals_fast.training import average

    a, b = four_step_run, tmp_path / "b"
    warmstart.save_model_folder(*warm, b / "best")  # two decoder layers, the run has one
    with pytest.raises(ValueError, match="at least two"):
        average.average_qagen([a / "best"], tmp_path / "o1", data_dir=DATA)
    with pytest.raises(ValueError, match="base architecture"):
        average.average_qagen([a / "best", b / "best"], tmp_path / "o2", data_dir=DATA)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        average.average_qagen([a / "best", tmp_path], tmp_path / "o3", data_dir=DATA)
    with pytest.raises(ValueError, match="one of the inputs"):
        average.average_qagen([a / "best", a / "checkpoints" / "step-2"], a / "best", data_dir=DATA)
    with pytest.raises(ValueError, match="base"):
        average.average_qagen([a / "checkpoints" / "step-2", a / "checkpoints" / "step-2"], tmp_path / "o4", data_dir=DATA)
    with pytest.raises(SystemExit, match="average-qagen: averaging needs"):
        from quals_fast.cli import main

        main(["average-qagen", str(a / "best"), "--output", str(tmp_path / "o5"), "--data-dir", str(DATA)])
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
