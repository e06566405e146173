#!/usr/bin/env python
"""Grow a trained model: its weights in a larger architecture, new attention blocks identity.

    python scripts/grow_model.py --config configs/models/toy_canvas.yaml \
        configs/toy/canvas_base_fine_attn.yaml --from checkpoints/toy/canvas_base.safetensors \
        --out init.safetensors
    python main.py --base configs/toy/canvas_base.yaml configs/toy/canvas_base_fine_attn.yaml \
        model.params.ckpt_path=init.safetensors

The configs describe the grown model (the old model's config with the new blocks); the
configs' own ``ckpt_path`` is ignored. The output holds every tensor of the grown model
(float32), and the grown model computes the old one's function until it is trained
(`unlearn.engine.warm_start`).
"""

from __future__ import annotations

import argparse

from unlearn.scripting import output_path, run_script


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", required=True, help="configs of the grown model, merged in order")
    p.add_argument("--from", dest="source", required=True, help="weights of the smaller model (.safetensors or .ckpt)")
    p.add_argument("--out", required=True, help="output .safetensors")
    return p


def main(argv: list[str] | None = None) -> list[str]:
    args = build_parser().parse_args(argv)
    out = output_path(args.out, ".safetensors")
    from safetensors.torch import save_file

    from unlearn.engine.loading import load_model
    from unlearn.engine.warm_start import warm_start

    model = load_model(args.config, overrides=["model.params.ckpt_path=null"])
    blocks = warm_start(model, args.source)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={"grown_from": str(args.source), "new_blocks": ",".join(blocks)})
    print(f"wrote {out}: {len(blocks)} new blocks: {', '.join(blocks)}")
    return blocks


if __name__ == "__main__":
    run_script(main)
