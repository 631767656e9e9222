"""ELM on a TPU pod slice (or a multi-node GPU cluster) with a decoder of a few billion parameters.

Run on every host (launch/tpu_pod.sh does this):
  ELM_JAX_DISTRIBUTED=1 python -m elm_jax.main --config=configs/pod.py --workdir=/mnt/shared/runs/ml25m-2b \
      --config.llm.checkpoint=/mnt/models/gemma-3-4b-pt --config.data.path=/mnt/data/ml-25m.zip
Args: --config=configs/pod.py:llm=/path/to/hf_folder  (a Gemma 3, Llama, Mistral or Qwen Hugging Face folder)
      --config=configs/pod.py:lora=16  (stage 2 as adapters + LoRA rank 16 instead of full fine-tuning)

FSDP over every device (`fsdp=-1`), so parameters, gradients and Adam moments are split across the slice;
remat keeps activation memory flat in the number of layers. The workdir must be a path every host sees.
"""

import ml_collections

from configs import default, movielens


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = default.parse_arg(arg, llm="", job="train", lora=0)
    c = movielens.get_config(f"job={args.job}")
    c.llm.checkpoint = args.llm or ml_collections.config_dict.placeholder(str)  # a Hugging Face folder: required
    c.llm.dtype = "bfloat16"
    c.llm.param_dtype = "float32"  # master weights; the step computes in bf16
    c.llm.scan_layers = True
    c.llm.remat_policy = "dots_no_batch"
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.train.batch_size = 256  # a multiple of the device count
    c.elm.adapter.hidden_dim = 4096
    c.elm.chat = False  # base checkpoints; set True for instruction-tuned ones
    c.stage1.steps, c.stage2.steps = 20_000, 40_000  # 256 x 40k ~ the paper's 32 x 300k examples
    if args.lora:
        c.stage2.trainable = r"adapters_.*"
        c.stage2.lora.rank = args.lora
        c.stage2.learning_rate = 2e-4
    return c
