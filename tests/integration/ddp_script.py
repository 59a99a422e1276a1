"""A PALM-style training script, run by tests/integration/test_distributed.py with plain `python` and under
`torchrun`: the script does not change between the two (that is the point).

Usage: python ddp_script.py WORK_DIR VOCAB single|noseed|tokens|multi|tag|steps
(single: one Classify task with EMA weights, reader seed 3, exported as a bundle at the end; noseed: the same
with seed=None; tokens: the same with token-budget batches of at most 64 padded tokens per process; multi: two
tasks, MultiHeadTrainer; tag: a softmax SequenceLabel task, whose loss is a mean over words, trained only;
steps: PALM's own loop, `train_one_step`, of a Trainer and of a MultiHeadTrainer with that tagger, losses only). TORCHPALM_FSDP=1 in the environment shards the model
with FSDP2 instead of DDP, without a change here.
Writes WORK_DIR/out (saver, metrics.jsonl, final checkpoint, predictions, bundle) and WORK_DIR/rank<R>.json
(what predict() returned on that rank, and the run's facts).
"""

import json
import os
import sys

import torch

import torchpalm as palm

CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "vocab_size": 30522, "max_position_embeddings": 128, "type_vocab_size": 2, "hidden_act": "gelu",
          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02}

# TORCHPALM_TEST_BACKBONE=deberta: the same script on a tiny DeBERTa-v3 (relative attention, shared keys)
if os.environ.get("TORCHPALM_TEST_BACKBONE") == "deberta":
    CONFIG = {**CONFIG, "model_type": "deberta-v2", "type_vocab_size": 0, "relative_attention": True,
              "position_buckets": 8, "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": "p2c|c2p",
              "position_biased_input": False}
    BACKBONE = palm.backbone.DeBERTaV2
elif os.environ.get("TORCHPALM_TEST_BACKBONE") == "modernbert":  # a tiny ModernBERT with a 4-token window
    CONFIG = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "vocab_size": 30522,
              "intermediate_size": 48, "local_attention": 4, "global_attn_every_n_layers": 2, "pad_token_id": 0}
    BACKBONE = palm.backbone.ModernBERT
else:
    BACKBONE = palm.backbone.BERT

work, vocab = sys.argv[1], sys.argv[2]
mode = sys.argv[3]
multi = mode == "multi"
out = os.path.join(work, "out")
torch.manual_seed(0)


def classify(name, file, seed):
    reader = palm.reader.ClassifyReader(vocab, 32, seed=seed, do_lower_case=True)
    reader.load_data(os.path.join(work, file), 8, num_epochs=None if multi else 3)
    return reader


backbone = BACKBONE.from_config(CONFIG)


def tagger(epochs):
    reader = palm.reader.SequenceLabelReader(vocab, 32, {"O": 0, "B": 1, "I": 2}, seed=3, do_lower_case=True)
    reader.load_data(os.path.join(work, "tag.tsv"), 8, num_epochs=epochs)
    return reader


if mode == "steps":  # what train_one_step returns, rank by rank: the global batch's loss, like train() logs
    adam = palm.optimizer.Adam(None, 3e-3, palm.lr_sched.TriangularSchedualer(2, None))
    reader = tagger(2)
    reader.register_with(backbone)
    trainer = palm.Trainer("tag", device="cpu")
    trainer.build_forward(backbone, palm.head.SequenceLabel(3, 32, 0.0, use_crf=False))
    trainer.build_backward(adam)
    trainer.fit_reader(reader)
    single = [float(trainer.train_one_step(trainer.get_one_batch())["tag.loss"]) for _ in range(4)]
    backbone = BACKBONE.from_config(CONFIG)
    sentences = palm.reader.ClassifyReader(vocab, 32, seed=1, do_lower_case=True)
    sentences.load_data(os.path.join(work, "train.tsv"), 8, num_epochs=None)
    readers = [tagger(None), sentences]
    for r in readers:
        r.register_with(backbone)
    trainers = [palm.Trainer("tag", device="cpu"), palm.Trainer("cls", device="cpu")]
    trainers[0].build_forward(backbone, palm.head.SequenceLabel(3, 32, 0.0, use_crf=False))
    trainers[1].build_forward(backbone, palm.head.Classify(2, 32, 0.0))
    mh = palm.MultiHeadTrainer(trainers)
    mh.build_forward()
    mh.build_backward(palm.optimizer.Adam(None, 3e-3, palm.lr_sched.TriangularSchedualer(2, None)))
    mh.fit_readers_with_mixratio(readers, "tag", num_epochs=2)
    joint = []
    for _ in range(6):
        fetched, task_id = mh.train_one_step(mh.get_one_batch())
        joint.append([task_id, *(float(v) for v in fetched.values())])
    with open(os.path.join(work, f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump({"single": single, "multi": joint}, f)
    sys.exit(0)
if mode == "tag":  # sentences of 1-12 words: the ranks' halves of a batch hold different numbers of words
    reader = tagger(2)
    reader.register_with(backbone)
    trainer = palm.Trainer("tag", device="cpu")
    trainer.build_forward(backbone, palm.head.SequenceLabel(3, 32, 0.0, use_crf=False))
    trainer.build_backward(palm.optimizer.Adam(None, 3e-3, palm.lr_sched.TriangularSchedualer(2, None)))
    trainer.fit_reader(reader)
    trainer.set_saver(out, save_steps=100)
    trainer.train(print_steps=1)
    trainer.save(os.path.join(out, "final"))
    sys.exit(0)
if not multi:
    reader = classify("cls", "train.tsv", seed=None if mode == "noseed" else 3)
    if mode == "tokens":
        reader.set_batching(max_tokens=64)
    reader.register_with(backbone)
    trainer = palm.Trainer("cls", device="cpu")
    trainer.build_forward(backbone, palm.head.Classify(2, 32, 0.0))
    adam = palm.optimizer.Adam(None, 3e-3, palm.lr_sched.TriangularSchedualer(2, None))
    trainer.build_backward(adam, weight_decay=0.01, use_ema=True, ema_decay=0.9)
    trainer.fit_reader(reader)
    trainer.set_saver(out, save_steps=4)
    trainer.resume()  # from the latest checkpoint in `out`, if any (the resume test puts one there)
    dev = palm.reader.ClassifyReader(vocab, 32, do_lower_case=True, phase="predict")
    dev.load_data(os.path.join(work, "test.tsv"), 4)
    dev_backbone = BACKBONE.from_config(CONFIG, phase="predict")
    dev.register_with(dev_backbone)
    trainer.build_predict_forward(dev_backbone, palm.head.Classify(2, 32, phase="predict"))
    trainer.set_dev(dev)
    trainer.set_evaluation(every_steps=5)  # evaluation during training, best.cls kept by rank 0
    trainer.train(print_steps=1)
    final = trainer.save(os.path.join(out, "final"))
else:
    readers = [classify("a", "train.tsv", seed=1), classify("b", "train2.tsv", seed=2)]
    for r in readers:
        r.register_with(backbone)
    trainers = [palm.Trainer("a", device="cpu"), palm.Trainer("b", device="cpu")]
    for t, n in zip(trainers, (2, 3)):
        t.build_forward(backbone, palm.head.Classify(n, 32, 0.0))
    # TORCHPALM_TEST_BALANCE: the MultiHeadTrainer's balance ('none': PALM's plain sum; unset: the default)
    balance = os.environ.get("TORCHPALM_TEST_BALANCE")
    mh = palm.MultiHeadTrainer(trainers, **({} if balance is None else {"balance": None if balance == "none"
                                                                         else balance}))
    mh.build_forward()
    mh.build_backward(palm.optimizer.Adam(None, 3e-3, palm.lr_sched.TriangularSchedualer(2, None)), weight_decay=0.01)
    mh.fit_readers_with_mixratio(readers, "a", num_epochs=2)
    mh.set_saver(out, save_steps=4)
    mh.resume()  # from the latest checkpoint in `out`, if any (the resume tests put one there)
    mh.train(print_steps=1)
    final = mh.save(os.path.join(out, "final"))
    trainer = trainers[0]

def predict_reader(backbone):
    reader = palm.reader.ClassifyReader(vocab, 32, do_lower_case=True, phase="predict")
    reader.load_data(os.path.join(work, "test.tsv"), 4)  # 13 rows: batches of 4, 4, 4, 1
    reader.register_with(backbone)
    return reader


pred_backbone = BACKBONE.from_config(CONFIG, phase="predict")
extra = {}
if not multi:
    pred_reader = predict_reader(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.Classify(2, 32, phase="predict"))
    trainer.fit_reader(pred_reader, phase="predict")
    results = trainer.predict(output_dir=os.path.join(out, "pred"))
    palm.export(trainer, os.path.join(out, "bundle"))  # the EMA weights, whole
else:  # joint inference: both heads read the same text, one backbone pass per batch feeds both
    for t, n in zip(trainers, (2, 3)):
        t.build_predict_forward(pred_backbone, palm.head.Classify(n, 32, phase="predict"))
    mh.build_predict_forward()
    mh.merge_inference_readers([predict_reader(pred_backbone), predict_reader(pred_backbone)])
    joint = mh.predict(output_dir=os.path.join(out, "pred"))
    results = joint["a"]
    extra = {"b": [int(r["label"]) for r in joint["b"]], "backbone_passes": mh.backbone_passes}
if mode == "tokens":  # every rank's own weights after training (DDP keeps them equal though batches differ)
    extra["weights_sum"] = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
rank = int(os.environ.get("RANK", "0"))
shards = [p.to_local().numel() for p in trainer.model.parameters() if hasattr(p, "to_local")]
with open(os.path.join(work, f"rank{rank}.json"), "w") as f:
    json.dump({"results": [{"label": int(r["label"]), "probs": [float(p) for p in r["probs"]]} for r in results],
               "world_size": palm.distributed.world_size(), "seed": reader.seed if not multi else None,
               "final": final, "eval": trainer.eval_history if not multi else None,
               "steps": trainer.cur_train_step, "sharded_numel": sum(shards), "numel": sum(p.numel() for p in trainer.model.parameters()), **extra}, f)
