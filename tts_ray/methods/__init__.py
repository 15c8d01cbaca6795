"""TTS methods: one async function each, ``async def method(ctx, prompt) -> MethodResult``,
and the registry the router looks methods up in."""

from tts_ray.methods.base import Branch, MethodContext, MethodError, MethodResult
from tts_ray.methods.sampling import best_of_n, majority, single, weighted_majority
from tts_ray.methods.search import beam_search, dvts

METHODS = {
    "single": single,
    "majority": majority,
    "weighted_majority": weighted_majority,
    "best_of_n": best_of_n,
    "beam_search": beam_search,
    "dvts": dvts,
}
# Methods that read PRM scores.
SCORED_METHODS = frozenset({"weighted_majority", "best_of_n", "beam_search", "dvts"})

__all__ = ["METHODS", "SCORED_METHODS", "Branch", "MethodContext", "MethodError", "MethodResult"]
