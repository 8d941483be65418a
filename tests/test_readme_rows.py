"""The docs' contract tables and the tests agree row for row.

``ROWS`` maps every row of the Formats and Errors tables (``docs/serving.md``) and the
Failure semantics table (``docs/training.md``) to the tests that prove it through the real
server or the real ``./train``; each of those tests names the row in its docstring (as a
"README" row, from when the tables were in the README, or by its page). A row added to
the docs without a test, a test named here that no longer exists, or a row here the docs
dropped, fails below.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.docs import section

HTTP = "tests/test_contract_http.py"
PROCESS = "tests/test_serve_process.py"
TRAIN = "tests/test_train.py"
NGINX = "tests/test_nginx_errors.py"

# The page each table's section is on.
PAGES = {
    "Formats": "docs/serving.md",
    "Errors": "docs/serving.md",
    "Failure semantics": "docs/training.md",
}

# (table, the row's key) -> the tests that prove the row. The tables: Formats' two
# ("Content-Type", "Accept"; a row's key is its first cell), "Errors" (a row's key is its
# code) and "Failure semantics" ("exit: meaning").
ROWS: dict[tuple[str, str], list[str]] = {
    # --- Formats: request Content-Type ---------------------------------------------------
    ("Content-Type", "`text/csv` (also when absent, or `application/octet-stream`)"): [
        f"{HTTP}::test_every_content_type_and_accept",
        f"{HTTP}::test_content_type_variants_read_as_csv",
        f"{HTTP}::test_csv_header_present",
        f"{HTTP}::test_format_rows",
        f"{PROCESS}::test_feature_names_model",
    ],
    ("Content-Type", "`application/json`"): [
        f"{HTTP}::test_json_shapes",
        f"{HTTP}::test_single_flat_record",
        f"{PROCESS}::test_lone_pickle_beside_tarball_loads",
        f"{PROCESS}::test_feature_names_model",
        f"{PROCESS}::TestBatchMode::test_batch_server",
    ],
    ("Content-Type", "`application/jsonlines`"): [
        f"{HTTP}::test_format_rows",
        f"{PROCESS}::test_feature_names_model",
        f"{PROCESS}::test_lone_pickle_beside_tarball_loads",
    ],
    ("Content-Type", "`application/x-npy`"): [
        f"{HTTP}::test_every_content_type_and_accept",
        f"{HTTP}::test_format_rows",
        f"{HTTP}::test_error_table",
    ],
    # --- Formats: Accept ------------------------------------------------------------------
    ("Accept", "`text/csv`"): [
        f"{HTTP}::test_every_content_type_and_accept",
        f"{HTTP}::test_predict_proba_as_csv_rows",
    ],
    ("Accept", "`application/json`"): [
        f"{HTTP}::test_every_content_type_and_accept",
        f"{HTTP}::test_method_by_custom_attributes",
    ],
    ("Accept", "`application/jsonlines`"): [
        f"{HTTP}::test_every_content_type_and_accept",
    ],
    ("Accept", "`application/x-npy`"): [
        f"{HTTP}::test_every_content_type_and_accept",
        f"{PROCESS}::test_feature_names_model",
    ],
    ("Accept", "absent or `*/*`"): [
        f"{HTTP}::test_accept_rules",
        f"{HTTP}::test_accept_falls_back_to_json",
        f"{PROCESS}::TestBatchMode::test_batch_server",
    ],
    ("Accept", "a list (`text/csv;q=0.5, application/json`)"): [
        f"{HTTP}::test_accept_rules",
    ],
    # --- Errors (by code) -----------------------------------------------------------------
    ("Errors", "`empty_body`"): [f"{HTTP}::test_error_table"],
    ("Errors", "`invalid_input`"): [
        f"{HTTP}::test_error_table",
        f"{HTTP}::test_error_body_in_the_negotiated_format",
        f"{PROCESS}::test_feature_names_model",
        f"{PROCESS}::test_model_without_nan_support_rejects_nan",
    ],
    ("Errors", "`unknown_method`"): [f"{HTTP}::test_unknown_method"],
    ("Errors", "`not_found` / `method_not_allowed`"): [
        f"{HTTP}::test_unknown_paths_and_methods_are_json",
    ],
    ("Errors", "`bad_request`"): [
        f"{NGINX}::test_nginx_errors_are_json",
        f"{NGINX}::test_header_gunicorn_refuses_is_json",
    ],
    ("Errors", "`method_not_allowed` (names the method)"): [
        f"{NGINX}::test_nginx_errors_are_json",
    ],
    ("Errors", "`uri_too_long` / `headers_too_large`"): [
        f"{NGINX}::test_nginx_errors_are_json",
    ],
    (
        "Errors",
        "`length_required` / `not_implemented` / `http_version_not_supported`",
    ): [
        f"{NGINX}::test_nginx_errors_are_json",
        f"{NGINX}::test_every_nginx_error_has_a_json_page",
    ],
    ("Errors", "none: nginx closes the connection without an answer (it logs a 408)"): [
        f"{NGINX}::test_slow_client_is_dropped",
        f"{NGINX}::test_slow_headers_are_dropped",
    ],
    ("Errors", "`payload_too_large`"): [
        f"{HTTP}::test_oversize_body_is_413_from_nginx",
        f"{PROCESS}::test_without_nginx_gunicorn_takes_the_port",
    ],
    ("Errors", "`unsupported_media_type`"): [
        f"{HTTP}::test_error_table",
        f"{HTTP}::test_accept_falls_back_to_json",
    ],
    ("Errors", "`not_acceptable`"): [f"{HTTP}::test_error_table"],
    ("Errors", "`model_not_ready`"): [
        f"{PROCESS}::test_missing_model_is_503_with_reason",
        f"{PROCESS}::test_corrupt_model_is_503",
        f"{PROCESS}::test_failed_warm_up_is_503",
    ],
    ("Errors", "`model_server_unavailable`"): [
        f"{HTTP}::test_gunicorn_not_answering_is_503_from_nginx",
    ],
    ("Errors", "`model_server_timeout`"): [
        f"{PROCESS}::test_slow_invocation_times_out_with_504",
    ],
    ("Errors", "`server_error`"): [f"{PROCESS}::test_bug_is_500_with_traceback_in_log"],
    ("Errors", "`script_error`"): [
        "tests/test_script_serving.py::test_four_hooks_from_a_file_uri",
    ],
    # --- Failure semantics (exit: meaning) ------------------------------------------------
    ("Failure semantics", "0: trained"): [
        f"{TRAIN}::test_csv_classification_end_to_end",
    ],
    ("Failure semantics", "0: not the first host (several hosts)"): [
        f"{TRAIN}::test_second_host_exits_0_and_writes_nothing",
    ],
    ("Failure semantics", "1: the job's configuration or data needs fixing"): [
        f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable",
        f"{TRAIN}::test_user_mistake_exits_1_with_only_the_message",
    ],
    ("Failure semantics", "2: a bug"): [
        f"{TRAIN}::test_bug_exits_2_with_the_traceback"
    ],
    ("Failure semantics", "143: stopped by SIGTERM"): [
        f"{TRAIN}::test_sigterm_mid_fit_stops_within_seconds_and_leaves_no_model",
    ],
    ("Failure semantics", "usage error"): [
        f"{TRAIN}::test_usage_error_exits_2_without_a_failure_file",
    ],
}


def tables(title: str) -> list[list[list[str]]]:
    """The body rows (as cells) of each table in the section ``title`` of its page (up to
    the next heading of its level or higher), in order."""
    body = section(ROOT / PAGES[title], title)
    found: list[list[list[str]]] = []
    in_table = False
    for line in body.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        if not in_table:  # the header row opens a new table
            found.append([])
            in_table = True
            continue
        if set(line) <= set("|-: "):
            continue
        found[-1].append([cell.strip() for cell in line.strip("|").split("|")])
    return found


def docs_keys() -> set[tuple[str, str]]:
    content_types, accepts = tables("Formats")
    (errors,) = tables("Errors")
    (failures,) = tables("Failure semantics")
    keys = {("Content-Type", cells[0]) for cells in content_types}
    keys |= {("Accept", cells[0]) for cells in accepts}
    keys |= {("Errors", cells[2]) for cells in errors}
    for exit_status, meaning, *_ in failures:
        short = meaning
        if not meaning.startswith("not the first host"):
            short = re.split(r"[:(]", meaning)[0].strip()
        keys.add(("Failure semantics", f"{exit_status}: {short}"))
    # The usage error is a sentence under the table, not a row of it.
    text = section(ROOT / PAGES["Failure semantics"], "Failure semantics")
    if "A command-line usage error (`--hp novalue`) exits 2" in text:
        keys.add(("Failure semantics", "usage error"))
    return keys


def test_every_readme_row_has_its_tests_and_no_more():
    """Every row of the docs' tables is mapped to tests here, and nothing here names a
    row the docs do not have."""
    documented = docs_keys()
    assert sorted(documented - ROWS.keys()) == [], "rows in the docs without tests"
    assert sorted(ROWS.keys() - documented) == [], "rows here that the docs lack"


def defined_tests(path: Path) -> dict[str, str]:
    """``name`` or ``Class::name`` -> docstring, for every test function in ``path``."""
    tree = ast.parse(path.read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            found[node.name] = ast.get_docstring(node) or ""
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test_"):
                    found[f"{node.name}::{item.name}"] = ast.get_docstring(item) or ""
    return found


@pytest.mark.parametrize("row", sorted(ROWS), ids=lambda row: f"{row[0]}: {row[1]}")
def test_the_tests_of_each_row_exist_and_cite_the_readme(row):
    """Each test named for a row exists and its docstring says which row(s) of the docs it
    proves ("README ...", or the row's page)."""
    page = PAGES["Formats" if row[0] in ("Content-Type", "Accept") else row[0]]
    for ref in ROWS[row]:
        path, name = ref.split("::", 1)
        docstring = defined_tests(ROOT / path).get(name)
        assert docstring is not None, f"{ref} does not exist"
        assert "README" in docstring or page in docstring, (
            f"{ref} does not name its row (README or {page})"
        )
