"""A load refused by a column type names the model, the row and the field at fault."""
from __future__ import annotations

import pytest

from backup_assets.core.errors import LoadError
from backup_assets.core.restore import run_restore
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import open_backup
from tests.test_engine import MANIFEST, row, write


def test_a_string_too_long_for_its_varchar_names_row_pk_and_field(pg_dsn, pg_conn, tmp_path):
    pg_conn.execute("CREATE TABLE t_org (id bigserial PRIMARY KEY, slug varchar(5), name varchar(40))")
    rows = [row("t.org", pk, slug=f"s{pk}", name="n") for pk in range(1, 30)]
    rows.insert(17, row("t.org", 99, slug="far-too-long", name="n"))
    with pytest.raises(LoadError, match=r"^t\.org: row 17 \(pk 99\): field 'slug': a string of 12 characters "
                                        r"does not fit character varying\(5\)"):
        run_restore(pg_dsn, open_backup(write(tmp_path, rows)), MANIFEST, ImportSettings())
    assert pg_conn.execute("SELECT count(*) FROM t_org").fetchone()[0] == 0


def test_a_null_for_a_not_null_column_names_row_pk_and_field(pg_dsn, pg_conn, tmp_path):
    pg_conn.execute("CREATE TABLE t_org (id bigserial PRIMARY KEY, slug text NOT NULL, name text)")
    rows = [row("t.org", pk, slug=f"s{pk}", name="n") for pk in range(1, 10)]
    rows.insert(4, row("t.org", 42, slug=None, name="n"))
    with pytest.raises(LoadError, match=r"^t\.org: column 'slug' of table 't_org' is NOT NULL, but a row has no value "
                                        r"for it \(row 4, pk 42: field 'slug' is null or missing\); nothing of t\.org"):
        run_restore(pg_dsn, open_backup(write(tmp_path, rows)), MANIFEST, ImportSettings())
    assert pg_conn.execute("SELECT count(*) FROM t_org").fetchone()[0] == 0


def test_a_unique_violation_names_model_fields_and_values_even_with_commas(pg_dsn, pg_conn, tmp_path):
    from backup_assets.core.errors import UniqueViolationError

    pg_conn.execute("CREATE TABLE t_org (id bigserial PRIMARY KEY, slug text, name text, UNIQUE (name, slug))")
    rows = [row("t.org", 1, slug="a", name="Acme"), row("t.org", 2, slug="b, c", name="Beta, Inc"),
            row("t.org", 3, slug="b, c", name="Beta, Inc")]
    with pytest.raises(UniqueViolationError, match=r"^t\.org: unique key \(name, slug\) collides: "
                                                   r"\(name, slug\)=\(Beta, Inc, b, c\) .*nothing of t\.org was written"):
        run_restore(pg_dsn, open_backup(write(tmp_path, rows)), MANIFEST, ImportSettings())
    assert pg_conn.execute("SELECT count(*) FROM t_org").fetchone()[0] == 0
    pg_conn.execute("TRUNCATE t_org")
    rows[2] = row("t.org", 3, slug="b", name="Beta")
    rows.append(row("t.org", 4, slug="b", name="Beta"))
    with pytest.raises(UniqueViolationError, match=r"collides: name='Beta', slug='b' "):
        run_restore(pg_dsn, open_backup(write(tmp_path, rows, "second.json")), MANIFEST, ImportSettings())
