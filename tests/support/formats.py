"""A format that is not built in, to prove a new one is a class plus one settings line."""

import numpy as np

from modelapp.parsers import BaseBatchParser, Batch, to_float_rows
from modelapp.renderers import BaseBatchRenderer


class TSVParser(BaseBatchParser):
    media_type = "text/tab-separated-values"
    format = "tsv"

    def parse_bytes(self, data: bytes, params: dict[str, str]) -> Batch:
        rows = [line.split("\t") for line in data.decode().splitlines() if line]
        return Batch(values=to_float_rows(rows, "a TSV record"))


class TSVRenderer(BaseBatchRenderer):
    media_type = "text/tab-separated-values"
    format = "tsv"

    def render_predictions(self, predictions: np.ndarray) -> bytes:
        return "".join(f"{v}\n" for v in predictions.tolist()).encode()
