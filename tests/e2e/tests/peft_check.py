"""Loads a tailor-trained adapter with PEFT onto its base model and runs a forward pass.

Usage: peft_check.py BASE_MODEL_DIR ADAPTER_DIR
Prints {"missing": [...], "unexpected": [...], "changed": bool}; exits 1 on missing or unexpected
keys. "changed" says the adapter moves the logits (a trained LoRA B is non-zero).
"""

import json
import sys

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main(base_dir, adapter_dir):
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 14, 20, 33, 7]])
    with torch.no_grad():
        before = base(ids).logits.clone()
    pm = PeftModel.from_pretrained(base, adapter_dir).eval()
    file_sd = load_file(f"{adapter_dir}/adapter_model.safetensors")
    expected = set(get_peft_model_state_dict(pm).keys())
    missing = sorted(expected - set(file_sd))
    unexpected = sorted(set(file_sd) - expected)
    result = set_peft_model_state_dict(pm, file_sd)
    unexpected += list(result.unexpected_keys)
    with torch.no_grad():
        after = pm(ids).logits
    changed = bool((after - before).abs().max() > 1e-6)
    print(json.dumps({"missing": missing, "unexpected": unexpected, "changed": changed}))
    if missing or unexpected:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
