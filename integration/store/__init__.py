"""The database: tables, sessions, queries and migrations (the only place that commits)."""

# Every table in ``Base.metadata`` wherever the store is used: the RIS orders and MPPS tables, the critical
# alerts, the report objects viewers read, and the reading day's claims and upload cases live in modules of
# their own (``tables`` is long enough), and ``studies.order_id`` refers to ``orders``.
from integration.store import alert_tables as alert_tables
from integration.store import config_tables as config_tables
from integration.store import order_tables as order_tables
from integration.store import reading_tables as reading_tables
from integration.store import retention_tables as retention_tables
from integration.store import shadow_tables as shadow_tables
from integration.store import sso_tables as sso_tables
from integration.store import tables as tables
from integration.store import viewer_tables as viewer_tables
