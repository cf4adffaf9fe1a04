# The GPT baseline twin of config/train_tinystories_cpu.py: same depth, width, heads, context,
# batch, steps and learning-rate schedule, so the two runs see the same number of tokens.
# train: python train.py config/train_gpt_tinystories_cpu.py
# compare: python plot_metrics.py out-tinystories-cpu out-gpt-tinystories-cpu --labels MicroRWKV GPT

import os

# everything as in the MicroRWKV config, then:
exec(open(os.path.join(os.path.dirname(__file__), 'train_tinystories_cpu.py')).read())

out_dir = 'out-gpt-tinystories-cpu'
model_type = 'gpt'  # nanoGPT blocks: attention + 4x GELU MLP; the RWKV/SWA/GQA/MoE keys are unused
