"""Scan every aten schema in torch 2.13 for tensor arguments that look mutable but carry no
write annotation (alias_info.is_write). Heuristics: (1) op name ends with '_' (in-place
convention) but `self` not annotated; (2) arg names suggesting state written by the kernel
(running_*, *_out, out*, noise, *state*, *buf*, exp_avg*, found_inf, momentum_buffer, ...);
(3) Tensor[] args of _foreach_*_ without annotation. Prints each hit."""
import re, collections, torch

schemas = torch._C._jit_get_all_schemas()
aten = [s for s in schemas if s.name.startswith("aten::")]
print("aten schemas:", len(aten), " mutable (any is_write):", sum(s.is_mutable for s in aten))
SUSPECT = re.compile(r"^(running_.*|out\d*|.*_out|noise|.*state.*|.*buf.*|exp_avg.*|max_exp_avg_sq|found_inf|momentum_buffer.*|grad_?scale|.*_cache|counts?|step|scale_growth_tracker|growth_tracker|current_scale|weight_buf|dropout_state|seed)$")
hits = collections.defaultdict(list)
for s in aten:
    base = s.name.split("::")[1]
    for a in s.arguments:
        t = str(a.type)
        if "Tensor" not in t: continue
        w = a.alias_info is not None and a.alias_info.is_write
        if w: continue
        ov = f"{base}.{s.overload_name or 'default'}"
        if a.name == "self" and base.endswith("_") and not base.startswith("_foreach") and not base.endswith("__"):
            hits["in-place name, self unannotated"].append(f"{ov}({a.name}: {t})")
        elif base.startswith("_foreach") and base.endswith("_") and a.name == "self":
            hits["foreach in-place, self unannotated"].append(f"{ov}({a.name})")
        elif SUSPECT.match(a.name) and not (a.name == "out" and a.kwarg_only is False and "functional" in base):
            hits["state-like name, unannotated"].append(f"{ov}({a.name}: {t})")
for k, v in hits.items():
    print(f"\n== {k}: {len(v)}")
    for x in sorted(set(v)): print("  ", x)
