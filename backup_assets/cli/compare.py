"""``backup-assets backup compare``: Sentry's round-trip validation of two exports."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.compare import compare_sources, iter_rows
from ..core.decryptors import LocalFileDecryptor
from ..core.findings import write_findings
from ..core.manifest import Manifest
from ..core.source import open_backup
from . import backup
from .common import EXISTING_FILE, NEW_FILE, manifest_option, project_errors


@backup.command("compare")
@click.argument("left", type=EXISTING_FILE)
@click.argument("right", type=EXISTING_FILE)
@click.option(
    "--findings-file",
    type=NEW_FILE,
    help="Write the findings here as JSON (always written; [] when the exports match).",
)
@click.option("--decrypt-left-with", type=EXISTING_FILE, help="RSA private key (PEM) of an encrypted LEFT.")
@click.option("--decrypt-right-with", type=EXISTING_FILE, help="RSA private key (PEM) of an encrypted RIGHT.")
@manifest_option
@project_errors
def compare(
    left: Path,
    right: Path,
    findings_file: Path | None,
    decrypt_left_with: Path | None,
    decrypt_right_with: Path | None,
    manifest: Path | None,
) -> None:
    """Compare two exports (JSON or encrypted tarballs) as Sentry's validator does, in bounded memory.

    LEFT is the original, RIGHT the copy (for example a re-export after a restore). Rows are matched
    per model by ordinal; foreign keys are compared through the rows they point at, so different pks
    are fine; regenerated secrets, suffixed slugs and forward-moving timestamps are allowed. Both files
    are read together, once, in bounded memory: exports in Sentry's order are merged as they are read;
    rows of inputs in other orders wait in an encrypted temporary spill.

    Exit code: 0 when the exports match, 1 when differences were found or an input is unreadable.

    \b
    Examples:
      backup-assets backup compare before.json after.json --findings-file findings.json
      backup-assets backup compare backup.tar after.json --decrypt-left-with private.pem
    """
    models = Manifest.load(manifest)
    sources = []
    for path, key in ((left, decrypt_left_with), (right, decrypt_right_with)):
        backup = open_backup(path, LocalFileDecryptor(key) if key else None)
        backup.check_key()
        sources.append(lambda backup=backup, name=str(path): iter_rows(backup.open_plaintext, name))
    skipped: dict[str, tuple[int, int]] = {}
    findings = compare_sources(sources[0], sources[1], models, names=(str(left), str(right)), skipped=skipped)
    if skipped:
        click.echo(
            "Not compared (models the manifest does not know): "
            + ", ".join(f"{m} ({n} left, {k} right)" for m, (n, k) in sorted(skipped.items())),
            err=True,
        )
    if findings_file is not None:
        try:
            write_findings(findings, findings_file)
        except OSError as e:
            raise click.ClickException(f"{findings_file}: cannot write the findings: {e.strerror or e}") from None
    if findings:
        click.echo(f"Done, found {len(findings)} differences:\n")
        click.echo("\n\n".join(f.pretty() for f in findings))
        click.get_current_context().exit(1)
    click.echo("Done, found 0 differences")
