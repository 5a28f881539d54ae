"""The admin page for the platform team: replicas, spend, limits, client keys, on one page (docs/admin.md).

python -m gateway_kit.admin            # serves http://127.0.0.1:8090 (GATEWAY_ADMIN_HOST, GATEWAY_ADMIN_PORT)
"""
