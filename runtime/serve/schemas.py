"""The documented shapes of the server's bodies: the JSON Schemas and examples of POST /predict's request (ours and
text-embeddings-inference's, for the OpenAPI page; parsing is request.py's and tei.py's) and the pydantic models
of the answers (`response_models`: pydantic is imported when the app is built, so importing this needs no extra).
"""

PREDICT_SCHEMA = {
    "type": "object", "required": ["inputs"], "additionalProperties": False,
    "properties": {"inputs": {"oneOf": [
        {"type": "string", "minLength": 1, "description": "one text"},
        {"type": "array", "minItems": 1, "description": "a batch: texts and [text, text_pair] pairs",
         "items": {"oneOf": [{"type": "string", "minLength": 1},
                             {"type": "array", "items": {"type": "string", "minLength": 1},
                              "minItems": 2, "maxItems": 2}]}}]},
                   "budget": {"type": "number", "description": "target average layers through the model's "
                              "budget dial (default: the server's --budget, else the trained gates)"},
                   "max_layers": {"type": "integer", "minimum": 0, "description": "a hard cap: no row runs more "
                                  "layers (0..L; default: none)"}},
}
PREDICT_EXAMPLES = {
    "one text": {"value": {"inputs": "a fine movie"}},
    "a batch": {"value": {"inputs": ["a fine movie", "dull and long"]}},
    "a pair": {"value": {"inputs": [["the plot was thin", "the acting saved it"]]}},
    "at a budget": {"value": {"inputs": "a fine movie", "budget": 2.5}},
    "at most 2 layers a row": {"value": {"inputs": "a fine movie", "max_layers": 2}},
}


TEI_PREDICT_SCHEMA = {  # text-embeddings-inference's PredictRequest (docs/openapi.json), plus our opt-in extras
    "type": "object", "required": ["inputs"],
    "properties": {
        "inputs": {"oneOf": [
            {"type": "string", "description": "A single string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2,
             "description": "A pair of strings"},
            {"type": "array", "description": "A batch", "items": {"oneOf": [
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}]}}]},
        "raw_scores": {"type": "boolean", "default": False},
        "truncate": {"type": "boolean", "default": False, "nullable": True},
        "truncation_direction": {"type": "string", "enum": ["left", "right"], "default": "right"},
        "hadskip": {"type": "object", "description": "opt-in: {\"budget\": 2.5, \"max_layers\": 2}",
                    "properties": {"budget": {"type": "number"}, "max_layers": {"type": "integer", "minimum": 0}}}}}
TEI_PREDICTION = {"type": "object", "required": ["label", "score"],
                  "properties": {"label": {"type": "string"}, "score": {"type": "number"}}}
TEI_RESPONSE_SCHEMA = {"oneOf": [{"type": "array", "items": TEI_PREDICTION},
                                 {"type": "array", "items": {"type": "array", "items": TEI_PREDICTION}}]}
TEI_EXAMPLES = {
    "one text": {"value": {"inputs": "What is Deep Learning?"}},
    "a pair": {"value": {"inputs": ["the plot was thin", "the acting saved it"]}},
    "a batch": {"value": {"inputs": [["a fine movie"], ["the plot was thin", "the acting saved it"]]}},
    "raw scores, truncated": {"value": {"inputs": "a fine movie", "raw_scores": True, "truncate": True}},
    "at a budget": {"value": {"inputs": "a fine movie", "hadskip": {"budget": 2.5}}},
}


def response_models():
    """(PredictResponse, ErrorResponse, HealthResponse): pydantic models of the JSON answers."""
    from pydantic import BaseModel

    class PredictionOut(BaseModel):
        label: str
        label_id: int
        probs: dict[str, float]
        layers: list[int]  # 0-based indices of the layers that ran
        num_layers: int
        tokens: int  # tokens after truncation
        truncated: bool  # the input was cut to max_seq_len
        budget: float | None = None  # with --latency-target-ms: the budget it ran at (null: the trained gates)

    class PredictResponse(BaseModel):
        predictions: list[PredictionOut]

    class ErrorResponse(BaseModel):
        error: str
        error_type: str

    class HealthResponse(BaseModel):
        status: str

    return PredictResponse, ErrorResponse, HealthResponse
