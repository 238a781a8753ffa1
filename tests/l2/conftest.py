from tests.test_store_etcd import etcd, store  # noqa: F401  (a real etcd, and both stores)
