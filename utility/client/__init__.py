"""The client side, used only by `cui`: the daemon client and the user's secret cache."""
