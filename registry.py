"""The one registry style of the project: name -> object tables filled by decorators (SDEs, time grids, predictors,
correctors, solvers, networks, data sets, feature spaces, classifier objectives, trainers, toy samplers)."""


def decorator_for(table):
  """`register(name)` for `table`: `@register(name)` stores the decorated object under `name`, unchanged; a name
  that already holds another object is refused."""
  def register(name):
    def add(obj):
      if table.get(name, obj) is not obj:
        raise ValueError(f'{name!r} is already registered (as {table[name]!r})')
      table[name] = obj
      return obj
    return add
  return register
