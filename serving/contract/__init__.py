"""The HTTP contract, defined once: pydantic models of every request and response body and of
the query and path parameters.

Validation (``serving.validation`` runs requests through these models), the OpenAPI document
(``serving.openapi`` generates its schemas from them) and the typed client
(``serving.client`` returns them) all read this package, so a rule or a field is written here
and nowhere else: ``fields`` (limits, id and flag rules, ``describe``), ``requests`` and
``responses``.  The rules an event must pass are the store's (``feature_store.validation``):
the ``Event`` model calls them, so the API accepts exactly what the writer can store.

No Flask here: the client imports this package without the server's dependencies.  A failed
validation is a ``pydantic.ValidationError``; ``describe`` turns it into one message that names
the field and says what a valid value looks like.
"""

from serving.contract.fields import (
    DEFAULT_K,
    DEFAULT_MAX_EVENTS,
    ID_SCHEMA,
    MAX_CANDIDATES,
    MAX_GENRE_LENGTH,
    MAX_HISTORY,
    MAX_ID_LENGTH,
    MAX_K,
    check_id,
    describe,
    type_name,
)
from serving.contract.requests import (
    Event,
    EventBatch,
    RankRequest,
    RecommendationQuery,
    UserPath,
)
from serving.contract.responses import (
    SCORE_DOC,
    AdminStatus,
    Check,
    ErrorDetail,
    ErrorResponse,
    EventResult,
    EventResults,
    Health,
    Readiness,
    Recommendation,
    RecommendationList,
    ReloadResult,
    new_recommendation_id,
)

__all__ = [
    "DEFAULT_K",
    "DEFAULT_MAX_EVENTS",
    "ID_SCHEMA",
    "MAX_CANDIDATES",
    "MAX_GENRE_LENGTH",
    "MAX_HISTORY",
    "MAX_ID_LENGTH",
    "MAX_K",
    "SCORE_DOC",
    "AdminStatus",
    "Check",
    "ErrorDetail",
    "ErrorResponse",
    "Event",
    "EventBatch",
    "EventResult",
    "EventResults",
    "Health",
    "RankRequest",
    "Readiness",
    "Recommendation",
    "RecommendationList",
    "RecommendationQuery",
    "ReloadResult",
    "UserPath",
    "check_id",
    "describe",
    "new_recommendation_id",
    "type_name",
]
