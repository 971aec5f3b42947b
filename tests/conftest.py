from tests.gordo_fixture import gordo_server  # noqa
from tests.influx_fixture import influx_server, influx_database  # noqa: F401
