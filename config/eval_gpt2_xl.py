# OpenAI GPT-2 1.5B on OpenWebText: nanoGPT reports val loss 2.56 for it (not measured here: no hub access).
# data: python prepare_openwebtext.py            (-> data/openwebtext, GPT-2 BPE)
# run:  python train.py config/eval_gpt2_xl.py

import os

# everything as in eval_gpt2.py, then:
exec(open(os.path.join(os.path.dirname(__file__), 'eval_gpt2.py')).read())

init_from = 'gpt2-xl'
