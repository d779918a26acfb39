"""The sink: drains the operations topic into Customer.io's Track API."""
