"""Prices with and without VAT."""


def net_price(gross: float, vat_rate: float) -> float:
    """The price before VAT."""
    return gross / (1 + vat_rate)


def gross_price(net: float, vat_rate: float) -> float:
    """The price a customer pays."""
    return net * (1 + vat_rate)
