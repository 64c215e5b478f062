"""Checkout."""

from .cart import Cart
from .pricing import net_price

VAT_RATE = 0.2


def checkout(cart: Cart) -> float:
    gross = cart.total_gross()
    
