"""Routes each tier to the backend that renders it, and checks at start that the backend can.

`builtin` (the default) renders in the generator's worker processes; `gemini` and `openai` call
the providers' HTTP APIs from the event loop; `instant` answers at once with a solid colour, for
tests and benchmarks. A tier on an HTTP provider names the provider's `model`, and its
provider's API key must be set: a catalogue that breaks either rule stops the start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from services.generator.picture import Backend
from services.generator.providers import gemini, openai
from services.generator.providers.gemini import GeminiBackend
from services.generator.providers.http import ProviderSettings, key_variable
from services.generator.providers.instant import InstantBackend
from services.generator.providers.openai import OpenAIBackend
from services.generator.tiers import TierCatalogue, TierConfigError
from services.runtime.settings import ConfigError

__all__ = ["BACKEND_NAMES", "PROVIDER_NAMES", "check_backends", "open_backends"]

#: HTTP providers, each reached with its own API key.
PROVIDER_NAMES = ("gemini", "openai")

#: Every backend a tier may name.
BACKEND_NAMES = frozenset({"builtin", "instant", *PROVIDER_NAMES})

_EXAMPLE_MODELS = {"gemini": "gemini-3-pro-image-preview", "openai": "gpt-image-2"}
_MOST_REFERENCES = {"gemini": gemini.MOST_REFERENCES, "openai": openai.MOST_REFERENCES}
_OPENERS: dict[str, Callable[[ProviderSettings, int], Backend]] = {
    "gemini": GeminiBackend.open,
    "openai": OpenAIBackend.open,
}


def check_backends(
    catalogue: TierCatalogue, providers: Mapping[str, ProviderSettings], source: str
) -> None:
    """Refuses a catalogue its backends cannot serve.

    TierConfigError (naming `source`, the catalogue's file) for a tier that names no model on an
    HTTP provider, a model elsewhere, or a capability its provider lacks; ConfigError naming the
    variable for a provider in use without an API key.
    """
    for tier in catalogue:
        where = f"{source}: tiers.{tier.name}"
        if tier.backend not in PROVIDER_NAMES:
            if tier.model is not None:
                raise TierConfigError(
                    f"{where}.model: only a tier on an HTTP provider"
                    f" ({', '.join(PROVIDER_NAMES)}) names a model"
                )
            continue
        if tier.model is None:
            raise TierConfigError(
                f"{where}: backend {tier.backend!r} needs the provider's model, for example"
                f' model = "{_EXAMPLE_MODELS[tier.backend]}"'
            )
        most = _MOST_REFERENCES[tier.backend]
        if tier.capabilities.max_reference_images > most:
            raise TierConfigError(
                f"{where}.max_reference_images: the {tier.backend} backend takes at most"
                f" {most} reference images"
            )
        if tier.backend == "gemini" and tier.capabilities.inpainting:
            raise TierConfigError(
                f"{where}.inpainting: the gemini backend takes no mask;"
                " serve in-painting from builtin or openai"
            )
    for name in PROVIDER_NAMES:
        tiers = [tier.name for tier in catalogue if tier.backend == name]
        if tiers and providers[name].api_key is None:
            variable = key_variable(name)
            raise ConfigError(
                f"tier(s) {', '.join(tiers)} render on {name}, but neither {variable} nor"
                f" {variable}_FILE is set"
            )


def open_backends(
    catalogue: TierCatalogue,
    providers: Mapping[str, ProviderSettings],
    builtin: Callable[[], Backend],
) -> dict[str, Backend]:
    """The backends the catalogue's tiers use, by name; `builtin` makes the built-in one.

    Check the catalogue with `check_backends` first. Each HTTP provider gets one pooled client
    with a connection for every render its tiers may run at once.
    """
    backends: dict[str, Backend] = {}
    for tier in catalogue:
        name = tier.backend
        if name in backends:
            continue
        if name == "builtin":
            backends[name] = builtin()
        elif name == "instant":
            backends[name] = InstantBackend()
        else:
            connections = sum(t.max_concurrency for t in catalogue if t.backend == name)
            backends[name] = _OPENERS[name](providers[name], connections)
    return backends
