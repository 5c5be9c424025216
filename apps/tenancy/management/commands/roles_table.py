from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.tenancy.roles import roles_table_markdown


class Command(BaseCommand):
    help = "Write docs/roles.md, the role-by-action table, from apps/tenancy/roles.py."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--check", action="store_true", help="exit 1 if docs/roles.md is out of date")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(settings.BASE_DIR) / "docs" / "roles.md"
        table = roles_table_markdown()
        if options["check"]:
            if not path.exists() or path.read_text() != table:
                self.stderr.write("docs/roles.md is out of date: run `python manage.py roles_table`.")
                raise SystemExit(1)
            return
        path.parent.mkdir(exist_ok=True)
        path.write_text(table)
        self.stdout.write(f"wrote {path.relative_to(settings.BASE_DIR)}")
