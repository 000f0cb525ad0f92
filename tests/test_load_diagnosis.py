"""A load refused by a column type names the model, the row and the field at fault."""

from __future__ import annotations

import pytest

from backup_assets.core.errors import LoadError
from backup_assets.core.restore import run_restore
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import open_backup
from tests.test_engine import MANIFEST, row, write


@pytest.mark.parametrize(
    "ddl, rows, bad_at, bad, expected",
    [
        pytest.param(
            "slug varchar(5), name varchar(40)",
            29,
            17,
            row("t.org", 99, slug="far-too-long", name="n"),
            r"^t\.org: row 17 \(pk 99\): field 'slug': a string of 12 characters does not fit "
            r"character varying\(5\)",
            id="string too long for its varchar",
        ),
        pytest.param(
            "slug text NOT NULL, name text",
            9,
            4,
            row("t.org", 42, slug=None, name="n"),
            r"^t\.org: column 'slug' of table 't_org' is NOT NULL, but a row has no value for it \(row 4, "
            r"pk 42: field 'slug' is null or missing\); nothing of t\.org",
            id="null for a NOT NULL column",
        ),
    ],
)
def test_a_value_the_column_refuses_names_row_pk_and_field(pg_dsn, pg_conn, tmp_path, ddl, rows, bad_at, bad, expected):
    pg_conn.execute(f"CREATE TABLE t_org (id bigserial PRIMARY KEY, {ddl})")
    export = [row("t.org", pk, slug=f"s{pk}", name="n") for pk in range(1, rows + 1)]
    export.insert(bad_at, bad)
    with pytest.raises(LoadError, match=expected):
        run_restore(pg_dsn, open_backup(write(tmp_path, export)), MANIFEST, ImportSettings())
    assert pg_conn.execute("SELECT count(*) FROM t_org").fetchone()[0] == 0


def test_a_unique_violation_names_model_fields_and_values_even_with_commas(pg_dsn, pg_conn, tmp_path):
    from backup_assets.core.errors import UniqueViolationError

    pg_conn.execute("CREATE TABLE t_org (id bigserial PRIMARY KEY, slug text, name text, UNIQUE (name, slug))")
    rows = [
        row("t.org", 1, slug="a", name="Acme"),
        row("t.org", 2, slug="b, c", name="Beta, Inc"),
        row("t.org", 3, slug="b, c", name="Beta, Inc"),
    ]
    with pytest.raises(
        UniqueViolationError,
        match=r"^t\.org: unique key \(name, slug\) collides: "
        r"\(name, slug\)=\(Beta, Inc, b, c\) .*nothing of t\.org was written",
    ):
        run_restore(pg_dsn, open_backup(write(tmp_path, rows)), MANIFEST, ImportSettings())
    assert pg_conn.execute("SELECT count(*) FROM t_org").fetchone()[0] == 0
    pg_conn.execute("TRUNCATE t_org")
    rows[2] = row("t.org", 3, slug="b", name="Beta")
    rows.append(row("t.org", 4, slug="b", name="Beta"))
    with pytest.raises(UniqueViolationError, match=r"collides: name='Beta', slug='b' "):
        run_restore(pg_dsn, open_backup(write(tmp_path, rows, "second.json")), MANIFEST, ImportSettings())
