"""bench/profile_summary.py on small hand-made traces whose sums are known (ctest: profile_summary)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import profile_summary  # noqa: E402


def span(name, ts, dur, tid=1, cat=None):
    e = {"name": name, "ph": "X", "ts": ts, "dur": dur, "tid": tid}
    if cat:
        e["cat"] = cat
    return e


class Summary(unittest.TestCase):
    def test_legacy_operators_are_charged_their_own_time(self):
        # linear [0, 100) calls addmm [10, 70), which calls copy_ [20, 30); a second linear on
        # another thread overlaps the first without being nested in it.
        events = [span("aten::linear", 0, 100), span("aten::addmm", 10, 60), span("aten::copy_", 20, 10),
                  span("aten::linear", 50, 40, tid=2)]
        rows, what = profile_summary.summarize(events)
        self.assertEqual(what, "operators (CPU time)")
        self.assertEqual(sorted(rows), [("aten::addmm", 50, 1), ("aten::copy_", 10, 1), ("aten::linear", 80, 2)])

    def test_a_trace_with_gpu_work_is_summed_by_kernel(self):
        # Kineto: CPU operators, their launches and the kernels; only the GPU's work counts.
        events = [span("aten::mm", 0, 50, cat="cpu_op"), span("cudaLaunchKernel", 5, 3, cat="cuda_runtime"),
                  span("sm90_gemm", 10, 400, tid=7, cat="kernel"), span("sm90_gemm", 500, 300, tid=7, cat="kernel"),
                  span("Memcpy HtoD", 900, 20, tid=7, cat="gpu_memcpy"), span("ProfilerStep#1", 0, 1000, cat="user_annotation"),
                  {"name": "process_name", "ph": "M", "pid": 0}]
        rows, what = profile_summary.summarize(events)
        self.assertEqual(what, "kernels")
        self.assertEqual(sorted(rows), [("Memcpy HtoD", 20, 1), ("sm90_gemm", 700, 2)])

    def test_kineto_cpu_only_trace_counts_operators_not_annotations(self):
        events = [span("ProfilerStep#1", 0, 1000, cat="user_annotation"), span("aten::mm", 0, 50, cat="cpu_op"),
                  span("aten::add", 60, 5, cat="cpu_op")]
        rows, _ = profile_summary.summarize(events)
        self.assertEqual(sorted(rows), [("aten::add", 5, 1), ("aten::mm", 50, 1)])

    def test_families(self):
        self.assertEqual(profile_summary.family_of("sm90_xmma_gemm_bf16bf16_bf16f32"), "matmul")
        self.assertEqual(profile_summary.family_of("aten::copy_"), "copy/cast")
        self.assertEqual(profile_summary.family_of("flash_bwd_kernel"), "attention")


if __name__ == "__main__":
    unittest.main()
