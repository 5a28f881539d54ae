"""The kit's command-line tools, run on an operator's machine rather than in the gateway.

evaluate (`gateway-evaluate`, ./evaluate_gateway.py) and costs (`gateway-costs`, ./analyze_costs.py) share the
pricing and the usage-record fields with the gateway through this package. No module they import may import
mlflow (seconds of start-up): tests/unit/test_pricing.py checks it.
"""
