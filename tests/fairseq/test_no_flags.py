"""Options that are on by default are turned off by ``--no-*`` flags (fairseq makes a boolean field that defaults to
True a flag that turns it off, so such options are named for what the flag does)."""
import pytest

from tests.fairseq.cli_helpers import build_in_process


def build(data_bin, arch, *flags):
    return build_in_process(data_bin, arch, *flags)[1]


CASES = [  # arch, flag, what the model does by default / with the flag
    ("diffuseq_tiny", "--no-loss-aware-sampler", lambda m: m.time_sampler is not None),
    ("difformer_tiny", "--no-pred-length-offset", lambda m: m.length.offset),
    ("mdlm_tiny", "--no-pred-length-offset", lambda m: m.length.offset),
    ("mdlm_tiny", "--no-antithetic-time", lambda m: m.diffusion.antithetic),
]


@pytest.mark.parametrize("arch,flag,on", CASES, ids=[f"{a}{f}" for a, f, _ in CASES])
def test_on_by_default_and_off_with_the_no_flag(data_bin, arch, flag, on):
    assert on(build(data_bin, arch)) is True
    assert on(build(data_bin, arch, flag)) is False


def test_no_boolean_option_of_the_plugins_defaults_to_true():
    """Such an option's flag would turn it off while its name and help say on (the bug the no_* names fixed)."""
    import dataclasses

    import fairseq_plugins  # noqa: F401  (registers every dataclass below)
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from fairseq.models import MODEL_DATACLASS_REGISTRY
    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    ours = [dc for registry in (MODEL_DATACLASS_REGISTRY, TASK_DATACLASS_REGISTRY, CRITERION_DATACLASS_REGISTRY,
                                OPTIMIZER_DATACLASS_REGISTRY) for dc in registry.values()
            if dc.__module__.startswith("fairseq_plugins")]
    assert len(ours) >= 6
    checked = 0
    for dc in ours:
        for f in dataclasses.fields(dc):
            if f.type is bool or f.type == "bool":
                checked += 1
                # a field inherited from fairseq's own configs (e.g. --left-pad-source) is fairseq's
                owner = next(c for c in dc.__mro__ if f.name in getattr(c, "__annotations__", {}))
                if owner.__module__.startswith("fairseq_plugins"):
                    assert f.default is False, f"{dc.__name__}.{f.name} defaults to {f.default}"
    assert checked >= 5
