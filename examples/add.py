def add(a, b):
    

print(add(1, 2))
