"""Name -> object tables filled by decorators: the SDEs, the time grids, the predictors and the correctors."""


def decorator_for(table):
  """`register(name)` for `table`: `@register(name)` stores the decorated object under `name`, unchanged."""
  def register(name):
    def add(obj):
      table[name] = obj
      return obj
    return add
  return register
