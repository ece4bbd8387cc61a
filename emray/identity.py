"""Identity: the one place that turns a run into its trial and stage keys.

The rules (what enters a key, how it is hashed) live with the hash primitives in emray/hashing.py;
a path's content is ``emray.data.paths.content_identity``, a model's ``emray.models.model_identity``.
This module sits above the defenses because a run's key includes each defense's typed params.

Code versions. A key also carries the version of the code that computes the result: the training
recipe's (``RECIPE_VERSION``), the evaluation's (``EVALUATION_VERSION``) and each defense's
(``Defense.version``, in its own file). Rule: bump a version when a change can alter a finished
trial's (or stage's) result for the same config: a fixed bug, a changed computation or default. Do
not bump it for refactors, speed-ups, logging, or a new option whose default keeps the old behaviour.
A version enters keys only once it is past 1, so the code that never changed keeps its keys; a
bumped one gives every affected trial a new key, and ``emray sweep`` reports the old trial folders
as superseded (kept on disk, not reused).
"""

from __future__ import annotations

from pydantic import BaseModel

from emray.data.paths import content_identity
from emray.defenses import get_defense_class
from emray.hashing import identity_dict, paths_of, sha256, short
from emray.models import model_identity

#: the training recipes (emray/train/): SFT, GRPO, the RL warm start
RECIPE_VERSION = 1
#: generation, judging and the criteria (emray/eval/); history: 1 the first, 2 unscored answers out of the denominators
EVALUATION_VERSION = 2  # 2: rates over scored answers, the unscored share its own rate (the reference's parse)


def code_versions(run) -> dict[str, int]:
    """The code versions past 1 that ``run``'s result depends on (empty while none was bumped)."""
    versions = {"recipe": RECIPE_VERSION, "evaluation": EVALUATION_VERSION}
    versions.update({f"defense:{s.name}": get_defense_class(s.name).version for s in run.defenses})
    return {name: v for name, v in versions.items() if v != 1}


def defense_params(spec) -> BaseModel:
    """A DefenseSpec's params: already its defense's typed Params model (emray.config.DefenseSpec)."""
    if not isinstance(spec.params, get_defense_class(spec.name).Params):
        raise TypeError(f"defense {spec.name}: params {spec.params!r} are not its typed Params")
    return spec.params


def run_paths(run) -> list[str]:
    """Every file or folder a run reads: its config's PATH fields and its defenses' PATH params."""
    paths = paths_of(run)
    for spec in run.defenses:
        paths += paths_of(defense_params(spec))
    return paths


def run_identity(run) -> dict:
    """The result-relevant content of a RunConfig: typed fields (markers applied) + file contents."""
    data = identity_dict(run)
    data["model"] = model_identity(run.model)
    data["defenses"] = [{"name": s.name, "params": identity_dict(defense_params(s))} for s in run.defenses]
    if versions := code_versions(run):
        data["code_versions"] = versions
    return {"config": data, "content": {p: content_identity(p) for p in dict.fromkeys(run_paths(run))}}


def trial_key(run) -> str:
    return short(sha256(run_identity(run)))


def stage_key(defense_cls, run, params: BaseModel) -> str:
    """Identity of a defense's cached stage: what ``defense_cls.stage_inputs`` says it reads (``params``:
    the defense's typed Params)."""
    key: dict = {
        "stage": defense_cls.stage_name,
        "defense": defense_cls.name,
        "inputs": defense_cls.stage_inputs(run, params),
    }
    if getattr(defense_cls, "version", 1) != 1:  # the rule above: past 1 only
        key["version"] = defense_cls.version
    return sha256(key)
