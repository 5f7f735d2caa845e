"""Issue 2 timing: QualsScorer against the straightforward QUALS reference (encoder output copied per
beam, source re-encoded per pair, Python bookkeeping), same inputs, 1 thread.

    python tools/time_engine.py tiny     # the test fixture model, 4 pairs, best of 3
    python tools/time_engine.py base     # a random BART-base-sized model, 2 XSum pairs, 1 round
"""
import json, os, sys, tempfile, time, torch
sys.path.insert(0, "tests")
torch.set_num_threads(1)
from quals_fast import QualsScorer
from quals_fast.reference.quals_reference import quals_reference, load_reference_model

def run(model_dir, sources, summaries, rounds, **opts):
    scorer = QualsScorer(model_dir, **opts)
    model, tok = load_reference_model(model_dir)
    ref_opts = {k: v for k, v in opts.items() if k in ("max_len",)}
    te, tr = [], []
    for _ in range(rounds):
        t = time.perf_counter(); a = scorer.score(sources, summaries, batch_size=len(sources)); te.append(time.perf_counter() - t)
        t = time.perf_counter(); b = quals_reference(model_dir, sources, summaries, model=model, tokenizer=tok, **ref_opts); tr.append(time.perf_counter() - t)
    same = all((x.score is None and y.score is None) or (x.score is not None and y.score is not None and abs(x.score - y.score) < 1e-4) for x, y in zip(a, b))
    return min(te), min(tr), same

news = [json.loads(l) for l in open("../shared/data/news/xsum_1000.jsonl")][:4]
which = sys.argv[1]
if which == "tiny":
    from tiny_model import build_tiny_model
    d = build_tiny_model(tempfile.mkdtemp() + "/tiny")
    srcs = ["the police said john smith was arrested in paris on monday", "mary won the game in london", "the storm killed ten people in the city", "the bank opened a new court in berlin"]
    sums = ["john smith was arrested in paris", "mary lost the match in berlin", "the storm killed two people", "the bank closed in berlin"]
    e, r, same = run(d, srcs, sums, 3)
else:
    from transformers import BartConfig, BartForConditionalGeneration, AutoTokenizer

    d = os.path.join(tempfile.gettempdir(), "quals-basebart")
    if not os.path.exists(d + "/model.safetensors"):
        tok = AutoTokenizer.from_pretrained("quals_fast/models/qagen-minilm")
        cfg = BartConfig(vocab_size=len(tok), d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1026, pad_token_id=0, bos_token_id=101, eos_token_id=102, decoder_start_token_id=102, forced_bos_token_id=None, forced_eos_token_id=None)
        torch.manual_seed(0)
        m = BartForConditionalGeneration(cfg)
        with torch.no_grad():
            m.final_logits_bias[0, 102] = 6.0   # random weights: end hypotheses early-ish, as a trained model does
        m.save_pretrained(d); tok.save_pretrained(d)
        c = json.load(open(d + "/config.json")); c["qagen_separator"] = " [qsep]"; json.dump(c, open(d + "/config.json", "w"))
    srcs = [n["source"] for n in news[:2]]; sums = [n["summary"] for n in news[:2]]
    e, r, same = run(d, srcs, sums, 1)
print(json.dumps({"model": which, "engine_s": round(e, 3), "reference_s": round(r, 3), "ratio": round(r / e, 2), "same_scores": same}))
