#!/usr/bin/env python3
"""The end-to-end peer: transformers' InternVLForConditionalGeneration with random weights in the exact
shape of InternVL2_5-1B or -4B (spec 1.3/1.4), bf16 on the GPU with SDPA attention, timed as
`internvl bench-e2e` times our engine: time to first token for one image of --tiles tiles and a
--question-tokens question, and decode tokens/s at each batch size. Prints one JSON object per figure.

    python3 e2e_peer.py --shape 1b --tiles 13 --batch 1,16

`--device cpu` runs the same steps on the CPU (a smoke check of the script where there is no GPU; its
timings mean nothing).
"""

import argparse
import json
import statistics
import time

import torch
import transformers

SHAPES = {
    "1b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
               intermediate_size=4864),
    "4b": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
               intermediate_size=11008),
}
VOCAB = 151674
IMAGE_TOKEN = 151667  # <IMG_CONTEXT>


DEVICE = "cuda"


def build(shape):
    vision = transformers.InternVLVisionConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        attention_bias=True, use_qk_norm=False, norm_type="layer_norm", layer_norm_eps=1e-6,
        hidden_act="gelu", image_size=448, patch_size=14, num_channels=3, use_mean_pooling=True)
    text = transformers.Qwen2Config(vocab_size=VOCAB, rope_theta=1e6, rms_norm_eps=1e-6,
                                    max_position_embeddings=32768, tie_word_embeddings=False,
                                    **SHAPES[shape])
    config = transformers.InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, image_seq_length=256,
        downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=False)
    for c in (config, config.vision_config, config.text_config):
        c._attn_implementation = "sdpa"
    with torch.device(DEVICE):
        model = transformers.InternVLForConditionalGeneration(config).to(torch.bfloat16).eval()
    return model


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    p.add_argument("--tiles", type=int, default=13)
    p.add_argument("--question-tokens", type=int, default=64)
    p.add_argument("--batch", default="1,16")
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.manual_seed(0)
    model = build(args.shape)
    name = f"transformers {transformers.__version__} InternVLForConditionalGeneration {args.shape} bf16 sdpa"
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    question = torch.randint(1000, 100000, (args.question_tokens,), device=DEVICE, generator=gen)
    # ~30 template tokens around the image and the question, as in our prompt.
    head = torch.randint(1000, 100000, (20,), device=DEVICE, generator=gen)
    tail = torch.randint(1000, 100000, (10,), device=DEVICE, generator=gen)
    image = torch.full((256 * args.tiles,), IMAGE_TOKEN, device=DEVICE)
    ids = torch.cat([head, image, question, tail]).unsqueeze(0)
    pixels = (torch.rand(args.tiles, 3, 448, 448, device=DEVICE, generator=gen) - 0.5) * 4
    pixels = pixels.to(torch.bfloat16)

    with torch.inference_mode():
        def first_token():
            out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
            out.logits[:, -1].argmax(-1).item()
        first_token()
        ttft = statistics.median(timed(first_token) for _ in range(args.repeats))
        print(json.dumps({"figure": "time_to_first_token_s", "peer": name, "tiles": args.tiles,
                          "prompt_tokens": ids.shape[1], "value": ttft}), flush=True)

        text = torch.cat([head, question, tail]).unsqueeze(0)
        for batch in [int(b) for b in args.batch.split(",")]:
            inputs = text.expand(batch, -1).contiguous()

            def generate(n):
                return lambda: model.generate(input_ids=inputs, max_new_tokens=n, min_new_tokens=n,
                                              do_sample=False, pad_token_id=0)
            generate(2)()
            short = statistics.median(timed(generate(2)) for _ in range(args.repeats))
            long = statistics.median(timed(generate(args.decode_steps + 2)) for _ in range(args.repeats))
            step = (long - short) / args.decode_steps
            print(json.dumps({"figure": "decode_tokens_per_s", "peer": name, "batch": batch,
                              "step_ms": step * 1e3, "value": batch / step, "per_sequence": 1 / step}),
                  flush=True)


if __name__ == "__main__":
    main()
