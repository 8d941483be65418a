"""Contract suite: every parser and renderer, round-tripping the same batches."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from modelapp import conf
from modelapp.exceptions import InvalidInput
from modelapp.parsers import BaseBatchParser, CSVParser, JSONParser, NPYParser
from modelapp.renderers import BaseBatchRenderer, CSVRenderer, JSONRenderer, NPYRenderer

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [0.0, -1.5, 1e-3, 2e10]])


def encode(parser: BaseBatchParser, rows: np.ndarray) -> bytes:
    if parser.media_type == "text/csv":
        return "".join(",".join(map(repr, r)) + "\n" for r in rows.tolist()).encode()
    if parser.media_type == "application/json":
        return json.dumps({"instances": rows.tolist()}).encode()
    if parser.media_type == "application/jsonlines":
        return "".join(json.dumps(r) + "\n" for r in rows.tolist()).encode()
    if parser.media_type == "application/x-parquet":
        buffer = io.BytesIO()
        pd.DataFrame(rows, columns=[f"f{j}" for j in range(4)]).to_parquet(buffer)
        return buffer.getvalue()
    buffer = io.BytesIO()
    np.save(buffer, rows)
    return buffer.getvalue()


def decode(renderer: BaseBatchRenderer, body: bytes) -> list:
    if renderer.media_type == "text/csv":
        return [
            [float(v) for v in line.split(",")] for line in body.decode().splitlines()
        ]
    if renderer.media_type == "application/json":
        return json.loads(body)["predictions"]
    if renderer.media_type == "application/jsonlines":
        return [json.loads(line) for line in body.decode().splitlines()]
    if renderer.media_type == "application/x-parquet":
        frame = pd.read_parquet(io.BytesIO(body))
        if list(frame.columns) == ["prediction"]:
            return frame["prediction"].tolist()
        return frame.to_numpy().tolist()
    return np.load(io.BytesIO(body)).tolist()


@pytest.fixture(params=conf.DEFAULTS["PARSERS"])
def parser(request):
    return conf.import_class(request.param, BaseBatchParser, "PARSERS")()


@pytest.fixture(params=conf.DEFAULTS["RENDERERS"])
def renderer(request):
    return conf.import_class(request.param, BaseBatchRenderer, "RENDERERS")()


class TestParserContract:
    def test_round_trip(self, parser):
        """Every parser reads the same records back exactly, in order."""
        batch = parser.parse(io.BytesIO(encode(parser, ROWS)), parser.media_type)
        assert batch.values.tolist() == ROWS.tolist()
        assert len(batch) == 3

    def test_single_record(self, parser):
        """One record is a batch of one."""
        batch = parser.parse(io.BytesIO(encode(parser, ROWS[:1])), parser.media_type)
        assert len(batch) == 1

    @pytest.mark.parametrize("body", [b"", b"  \n"])
    def test_empty_body(self, parser, body):
        """An empty or blank body is InvalidInput naming the expected format."""
        with pytest.raises(InvalidInput, match=f"empty.*{parser.media_type}"):
            parser.parse(io.BytesIO(body), parser.media_type)

    def test_garbage(self, parser):
        """Bytes that are not the format are InvalidInput, never another exception."""
        with pytest.raises(InvalidInput):
            parser.parse(io.BytesIO(b"\x00\xff{[garbage"), parser.media_type)

    def test_declares_media_type(self, parser):
        assert parser.media_type
        assert parser.format


class TestRendererContract:
    @pytest.mark.parametrize(
        "predictions",
        [np.array([0, 2, 1]), np.array([0.5, np.float64(1e-7), 3.0])],
    )
    def test_labels_one_per_record(self, renderer, predictions):
        """One output value per record, in order, numbers unchanged."""
        body = renderer.render(predictions, renderer.media_type, {})
        out = decode(renderer, body)
        flat = [v[0] if isinstance(v, list) else v for v in out]
        assert flat == predictions.tolist()

    def test_scores_rows(self, renderer):
        """2-D scores render one row per record."""
        scores = np.array([[0.25, 0.75], [1.0, 0.0]])
        assert (
            decode(renderer, renderer.render(scores, renderer.media_type, {}))
            == scores.tolist()
        )

    def test_string_labels(self, renderer):
        """String class labels render without pickling."""
        labels = np.array(["setosa", "virginica"], dtype=object)
        body = renderer.render(labels, renderer.media_type, {})
        if renderer.media_type == "text/csv":
            assert body == b"setosa\nvirginica\n"
        else:
            assert [
                v[0] if isinstance(v, list) else v for v in decode(renderer, body)
            ] == ["setosa", "virginica"]

    def test_no_charset(self, renderer):
        """No charset is ever added to the media type."""
        assert renderer.charset is None

    def test_renders_errors(self, renderer):
        """Errors render as the renderer's error media type, carrying the detail."""

        class Response:
            exception = True

        body = renderer.render(
            {"detail": "what went wrong", "code": "invalid_input"},
            renderer.media_type,
            {"response": Response()},
        )
        assert b"what went wrong" in body
        if renderer.error_media_type != "text/csv":
            assert json.loads(body.splitlines()[0])["code"] == "invalid_input"


def test_nan_renders_as_valid_json():
    """A NaN prediction is null in JSON, never an invalid NaN token."""
    body = JSONRenderer().render(
        np.array([1.0, np.nan, np.inf]), "application/json", {}
    )
    assert json.loads(body) == {"predictions": [1.0, None, None]}


def test_csv_quoted_fields_and_blank_values():
    """Quoted CSV fields parse; blank fields are missing values (NaN)."""
    batch = CSVParser().parse(io.BytesIO(b'"1.5",2,,4\n'), "text/csv")
    assert batch.values[0, 0] == 1.5
    assert np.isnan(batch.values[0, 2])


def test_csv_header_and_charset():
    """``header=present`` yields the column names; the charset parameter is honoured."""
    body = "größe,b\n1,2\n".encode("latin-1")
    batch = CSVParser().parse(
        io.BytesIO(body), "text/csv; header=present; charset=latin-1"
    )
    assert batch.columns == ["größe", "b"]
    assert batch.values.tolist() == [[1.0, 2.0]]


def test_csv_crlf_and_trailing_newlines():
    """Windows line ends and a file slice's trailing newlines are not records."""
    batch = CSVParser().parse(io.BytesIO(b"1,2\r\n3,4\r\n\r\n\n"), "text/csv")
    assert batch.values.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_json_objects_are_records():
    """JSON objects are kept as records for the predictor to order by feature name:
    numbers as one float array with the keys (``RecordTable``), text as the objects."""
    batch = JSONParser().parse(io.BytesIO(b'[{"a": 1, "b": 2}]'), "application/json")
    assert batch.records.keys == ["a", "b"]
    assert batch.records.in_order(["b", "a"]).tolist() == [[2.0, 1.0]]
    batch = JSONParser().parse(io.BytesIO(b'[{"a": "x", "b": 2}]'), "application/json")
    assert batch.records == [{"a": "x", "b": 2}]


def test_json_mixed_records_rejected():
    """Arrays and objects in one batch are InvalidInput."""
    with pytest.raises(InvalidInput, match="mixes records"):
        JSONParser().parse(io.BytesIO(b'[[1, 2], {"a": 1}]'), "application/json")


def test_npy_rejects_pickles_and_3d():
    """Object arrays (pickles) and arrays of rank 3 are refused."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput, match="allow_pickle is off"):
        NPYParser().parse(io.BytesIO(buffer.getvalue()), "application/x-npy")
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 2, 2)))
    with pytest.raises(InvalidInput, match=r"shape \(2, 2, 2\)"):
        NPYParser().parse(io.BytesIO(buffer.getvalue()), "application/x-npy")


def test_npy_string_labels_round_trip():
    """String labels are saved as a unicode array, loadable without pickle."""
    body = NPYRenderer().render(
        np.array(["a", "b"], dtype=object), "application/x-npy", {}
    )
    assert np.load(io.BytesIO(body), allow_pickle=False).tolist() == ["a", "b"]


def test_csv_renderer_quotes_labels_with_commas():
    body = CSVRenderer().render(np.array(["a,b", "c"], dtype=object), "text/csv", {})
    assert body == b'"a,b"\nc\n'


@pytest.mark.parametrize(
    "body",
    [
        b'[{"a": 1, "b": 2}, {"a": 3, "b": null}]',
        b'{"b": 2, "a": 1}\n{"a": 3, "b": 4}\n',
        b'[{"a": 1, "c": 2}]',
        b'{"a": 1}\n{"a": 2}\n',
    ],
)
def test_numeric_records_answer_as_a_list_of_objects(body, monkeypatch):
    """Records held as one float array (``RecordTable``) reach the model as the same
    matrix, or the same error, as the same records held as a list of objects."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier

    from modelapp import parsers
    from modelapp.predictors import SklearnPredictor

    frame = pd.DataFrame({"a": [0.0, 1, 2, 3], "b": [1.0, 0, 1, 0]})
    predictor = SklearnPredictor(
        HistGradientBoostingClassifier().fit(frame, [0, 1] * 2)
    )

    def answer() -> str:
        batch = JSONParser().parse(io.BytesIO(body), "application/json")
        try:
            return repr(predictor.to_input(batch).tolist())
        except InvalidInput as exc:
            return str(exc.detail)

    fast = answer()
    monkeypatch.setattr(parsers, "parse_numeric_records", lambda data, lines: None)
    assert fast == answer()
