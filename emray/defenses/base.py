"""The defense interface and registry: everything a training recipe asks a defense, declared here.

A defense is one file under emray/defenses/ (docs/adding-a-defense.md). It pulls levers, each an
optional method with a default that does nothing, so a defense overrides only what it uses:
  * data:  ``transform_examples`` rewrites the training examples (inoculation, interleaving);
  * model: ``attach`` / ``detach`` add and remove hooks around training only (persona steering);
  * loss:  ``loss`` returns extra terms added to the training loss (KL, LDIFS, SFT mix), reading
    the forward passes named in ``needs`` (emray/defenses/losses.py); ``has_loss_term``,
    ``hidden_layers``, ``head_chunk_tokens`` and ``term_names`` tell the trainer what to prepare;
  * RL (scenario rl, emray/train/grpo.py): ``rl_prompts`` fixes the order of the GRPO prompts and
    may add its own, ``rl_reward`` wraps the task reward, ``rl_beta`` sets GRPO's own KL β;
  * stage: ``stage_name`` + ``build_stage`` a cached computation the sweep runs once before the
    trials (persona vector, safe-data selection; ``candidates`` filters a selection's pool).
Config time: ``Params`` (a pydantic model: configs and sweeps validate it once and search over it),
``scenarios`` / ``check_scenario``, ``stage_inputs`` / ``stage_files`` (its stage's identity and files).
Defenses compose: the recipes (SFT and GRPO alike) apply every selected defense's levers in config
order, and name no defense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from emray.configio import Strict

if TYPE_CHECKING:
    import torch

    from emray.config import RunConfig

#: The artifact key (and stage name) of a safe-data selection by score (Interleaving+/++, and the RL
#: defenses that draw their data from one): ``f"{SELECTION_ARTIFACT}:{defense name}"``.
SELECTION_ARTIFACT = "safe_selection"

Messages = list[dict[str, str]]
Example = dict[str, Any]  # {"messages": Messages, ...}


@dataclass
class DefenseContext:
    """What a defense may need beyond its own params: the run config, tokenizer, seed, artifacts.

    ``artifacts`` carries the outputs of cached sweep stages (e.g. a persona vector file, an
    Interleaving+ selection) keyed by name, so a defense never recomputes a stage itself.
    """

    config: RunConfig | None = None
    tokenizer: Any = None
    seed: int = 0
    artifacts: dict[str, Any] = field(default_factory=dict)


#: a defense's typed hyperparameters (its ``Params`` model)
P = TypeVar("P", bound=Strict)


class Defense(Generic[P]):
    name: ClassVar[str] = ""
    #: the hyperparameters' pydantic model; ``Defense[ThatModel]`` types ``self.params`` as it
    Params: ClassVar[type[Strict]] = Strict
    params: P
    #: what the loss lever needs from the trainer's forward passes; see emray/defenses/losses.py
    needs: ClassVar[frozenset[str]] = frozenset()
    #: a cached stage the sweep runs once before the trials (persona vector, safe-data selection);
    #: None when the defense needs none. See ``stage_description`` and ``build_stage``.
    stage_name: ClassVar[str | None] = None
    #: the scenarios (RunConfig.scenario) the defense can act in; ``scenario_hint`` says what to use instead
    scenarios: ClassVar[frozenset[str]] = frozenset({"narrow", "benign", "rl"})
    scenario_hint: ClassVar[str] = ""
    #: the loss terms ``loss`` may return; a micro-batch where it returns fewer logs the others as 0,
    #: so every step's metrics have the same columns
    term_names: ClassVar[tuple[str, ...]] = ()
    #: this defense's code version: bump it when a change alters results for the same params (the
    #: rule in emray/identity.py); its trials and stage then get new keys and old ones are superseded
    version: ClassVar[int] = 1

    @classmethod
    def check_scenario(cls, config: RunConfig, params: P, where: str) -> None:
        """Raise ValueError (at config time) when this defense cannot apply to ``config``'s scenario."""
        if config.scenario not in cls.scenarios:
            raise ValueError(
                f"{where}: cannot apply under scenario {config.scenario}"
                + (f"; {cls.scenario_hint}" if cls.scenario_hint else "")
            )

    @classmethod
    def stage_description(cls, config: RunConfig, params: P) -> str:
        """What this defense's stage is for ``config``, for people (the plan); not an identity."""
        return f"{cls.stage_name} for {config.model.name}"

    @classmethod
    def stage_inputs(cls, config: RunConfig, params: P) -> dict[str, Any]:
        """Everything the stage's result depends on (``emray.identity.stage_key`` hashes it).

        Stages with equal inputs run once per sweep. Default: the base model alone.
        """
        from emray.models import model_identity

        return {"model": model_identity(config.model)}

    @classmethod
    def stage_files(cls, config: RunConfig, params: P) -> list[str]:
        """Files the stage reads beyond the run's own (``--dry-run`` checks they exist)."""
        from emray.hashing import paths_of

        return paths_of(params)

    @classmethod
    def build_stage(cls, config: RunConfig, params: P) -> dict[str, Any]:
        """Build (or load from cache) the stage; returns artifacts merged into ``context.artifacts``."""
        return {}

    def __init__(self, params: P | dict | None = None, context: DefenseContext | None = None):
        # a dict only when a defense is built by hand (tests, notebooks); configs pass the typed model
        self.params = self.Params.model_validate(params or {}) if params is None or isinstance(params, dict) else params  # type: ignore[assignment]
        self.context = context or DefenseContext()

    def transform_examples(self, examples: list[Example]) -> list[Example]:
        return examples

    def attach(self, model: torch.nn.Module) -> None:
        """Called once before training starts."""

    def detach(self, model: torch.nn.Module) -> None:
        """Called once after training, before saving, evaluation or generation."""

    def head_chunk_tokens(self) -> int | None:
        """Answer tokens per LM-head chunk this defense's loss wants (memory ∝ chunk × vocab); None: no say."""
        return None

    def hidden_layers(self, model: torch.nn.Module) -> list[int]:
        """Indices into ``output_hidden_states`` that ``loss`` reads (the trainer requests their union)."""
        return []

    # -- RL levers (scenario rl) ---------------------------------------------------------------
    def rl_prompts(self, prompts: list[Example]) -> list[Example] | None:
        """The GRPO training prompts in the fixed order GRPO must see them, or None (no say: TRL
        shuffles). Runs after every data lever; rows may carry a ``kind`` the reward routes by."""
        return None

    def rl_reward(self, reward: Any) -> Any:
        """The reward GRPO trains on, given the task reward."""
        return reward

    def rl_beta(self) -> float | None:
        """GRPO's own KL coefficient β (TRL's estimate against the adapter-disabled model) this defense
        sets, or None (no say: ``rl.beta``). A defense that sets it adds no loss term for the same KL."""
        return None

    @classmethod
    def candidates(cls, params: P, pool: list[Example]) -> list[int]:
        """Indices of the pool rows a safe-data selection stage may pick (ranked by score after): all."""
        return list(range(len(pool)))

    def has_loss_term(self) -> bool:
        """Whether the trainer must build a DefenseBatch for this defense (it overrides ``loss``)."""
        return type(self).loss is not Defense.loss

    def loss(self, batch: Any) -> dict[str, torch.Tensor] | None:
        """Extra loss terms, each already weighted; keys name them in the metrics file."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params.model_dump(by_alias=True)})"


_REGISTRY: dict[str, type[Defense]] = {}


def register_defense(cls: type[Defense]) -> type[Defense]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"defense name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Defense]]:
    return _REGISTRY
