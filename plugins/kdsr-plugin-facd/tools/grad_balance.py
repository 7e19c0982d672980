"""Gradient norm on the student's parameters from each loss term (weight 1) at initialisation.

    python plugins/kdsr-plugin-facd/tools/grad_balance.py

x2, random-init EDSR-baseline teacher 32 ch x 8 blocks and student 16 ch x 4 blocks (the CPU configs'
pair), 16 random 32x32 LR patches. Used to pick loss weights that put each feature term's gradient at
the same scale as FAKD's official balance; random-init features, so an order of magnitude only.
"""
import torch
from kdsr import Batch, Outputs, capture
from kdsr.plugins import registry
torch.manual_seed(0); torch.set_num_threads(2)
bb = registry("backbone")
teacher = bb.create("edsr_baseline", {"n_feats": 32, "n_resblocks": 8}, scale=2).eval()
student = bb.create("edsr_baseline", {"n_feats": 16, "n_resblocks": 4}, scale=2)
hr = torch.rand(16, 3, 64, 64)
lr = torch.nn.functional.avg_pool2d(hr, 2)
losses = {
    "l1": registry("loss").create("l1", {}),
    "output_kd": registry("loss").create("output_kd", {}),
    "fd": registry("loss").create("fd", {"student_taps": ["body.0", "body.1", "body"], "teacher_taps": ["body.1", "body.3", "body"]}),
    "facd": registry("loss").create("facd", {"student_taps": ["body.0", "body.1", "body"], "teacher_taps": ["body.1", "body.3", "body"], "adaptive": "always"}),
    "facd_ratio": registry("loss").create("facd", {"form": "ratio", "student_taps": ["body.0", "body.1", "body"], "teacher_taps": ["body.1", "body.3", "body"], "adaptive": "always"}),
    "fakd_affinity": registry("loss").create("fakd", {"student_taps": ["body.0", "body.1", "upsampler.in"], "teacher_taps": ["body.1", "body.3", "upsampler.in"]}),
}
taps_s = ["body.0", "body.1", "body", "upsampler.in"]; taps_t = ["body.1", "body.3", "body", "upsampler.in"]
with torch.no_grad(), capture(teacher, taps_t) as st:
    tsr = teacher(lr)
t_out = Outputs(tsr, dict(st))
b = Batch(lr, hr)
for name, loss in losses.items():
    with capture(student, taps_s) as ss:
        ssr = student(lr)
    out = Outputs(ssr, dict(ss))
    with torch.no_grad():
        loss(out, t_out, b)
    student.zero_grad()
    if name == "fakd_affinity":  # FAKD's feature term alone, with its default weight beta / rgb_range
        v = loss.beta / loss.rgb_range * loss.affinity_term(out, t_out)
    else:
        v = loss(out, t_out, b)
    v.backward()
    v = v.detach()
    g = torch.sqrt(sum((p.grad ** 2).sum() for p in student.parameters() if p.grad is not None))
    print(f"{name:12s} value {float(v):.4g}  student grad norm {float(g):.4g}")
