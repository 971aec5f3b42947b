"""The URL types of the schema: HTTP servers and the Latigo database.

Each is checked as far as can be done without connecting, so that a URL that passes is one
the process can at least try at start: a host is there, the port is a port, and for the
database SQLAlchemy has the dialect and the driver installed. The text itself is kept as
written. Messages never quote a database URL: it may hold a password.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator
from sqlalchemy.engine.default import DefaultDialect

from latigo.config.errors import quote

# SQLAlchemy backends and drivers Latigo runs on (latigo.db tunes each of them)
SUPPORTED_DATABASES = {"sqlite": ("pysqlite",), "postgresql": ("psycopg",)}
# what a supported database URL looks like, for error messages
DATABASE_URL_FORMS = "sqlite:///<file> or postgresql+psycopg://<user>:<password>@<host>:<port>/<database>"


def _http_url(*schemes: str) -> AfterValidator:
    """An AfterValidator: the text is a URL of one of ``schemes`` with a host (and a valid
    port, if any). The text itself is kept: providers join paths to it as they are."""
    example = f"{schemes[0]}://<host>:<port>"

    def check(value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        except ValueError:
            raise ValueError(f"not a URL: write {example}") from None
        if parts.scheme.lower() not in schemes or not parts.hostname or any(c.isspace() for c in value):
            names = " or ".join(f"{scheme}://" for scheme in schemes)
            raise ValueError(f"must be an {names} URL with a host, e.g. {example}")
        return value

    return AfterValidator(check)


# the URL of an HTTP server (Gordo, InfluxDB)
HttpUrlText = Annotated[str, _http_url("http", "https")]
# the URL of a server reached only over TLS (the Azure AD authority)
HttpsUrlText = Annotated[str, _http_url("https")]


def _database_url(value: str) -> str:
    """The URL is one SQLAlchemy reads, of a supported backend and driver, whose DBAPI module
    is installed; checked without connecting. Messages never quote the URL: it may hold a
    password."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(value)
        backend = url.get_backend_name()
    except Exception:  # ArgumentError, or ValueError for a port that is not a number
        raise ValueError(f"not a URL SQLAlchemy can read: write {DATABASE_URL_FORMS}") from None
    if backend not in SUPPORTED_DATABASES:
        raise ValueError(
            f"Latigo runs on sqlite and postgresql+psycopg, not {quote(backend)}: write {DATABASE_URL_FORMS}"
        )
    try:
        dialect = url.get_dialect()
    except Exception:
        raise ValueError(f"no SQLAlchemy dialect for {quote(url.drivername)}: write {DATABASE_URL_FORMS}") from None
    drivers = SUPPORTED_DATABASES[backend]
    if dialect.driver not in drivers:
        raise ValueError(
            f"Latigo uses the {' or '.join(drivers)} driver for {backend}, not {quote(dialect.driver)}: "
            f"write {DATABASE_URL_FORMS}"
        )
    try:
        dbapi = dialect.import_dbapi()
    except ImportError:
        raise ValueError(f"the {dialect.driver} driver for {backend} is not installed") from None
    try:
        if url.port is not None and not 0 < url.port < 65536:
            raise ValueError
        if not issubclass(dialect, DefaultDialect):  # every dialect SQLAlchemy ships is one
            raise ValueError
        dialect(dbapi=dbapi).create_connect_args(url)
    except Exception:  # ArgumentError: a sqlite URL with a host, say
        raise ValueError(f"not a {backend} URL SQLAlchemy can connect with: write {DATABASE_URL_FORMS}") from None
    return value


# the URL of the Latigo database, in SQLAlchemy's form, of a supported backend and driver
DatabaseUrlText = Annotated[str, AfterValidator(_database_url)]
