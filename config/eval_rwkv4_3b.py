# RWKV-4 3B (trained on the Pile) on OpenWebText: the reference figure is val loss 2.42 (not measured here: no hub access).
# data: python prepare_openwebtext.py --tokenizer neox      (-> data/openwebtext_neox: RWKV-4 reads GPT-NeoX-20B
#       token ids, not GPT-2's; its per-token loss is over slightly different tokens than GPT-2's)
# run:  python train.py config/eval_rwkv4_3b.py
# float32 weights: ~12 GB of memory.

import os

# everything as in eval_rwkv4_169m.py, then:
exec(open(os.path.join(os.path.dirname(__file__), 'eval_rwkv4_169m.py')).read())

init_from = 'RWKV/rwkv-4-3b-pile'
