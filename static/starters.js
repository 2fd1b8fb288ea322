/* Data for the editor: display names and a hello-world starter per language id (aliases are tried too). */
"use strict";

// A language the server adds later without an entry here gets a comment instead.
const STARTERS = {
  python: 'name = "world"\nprint(f"Hello, {name}!")\n',
  python3: 'print("Hello, world!")\n',
  javascript: 'console.log("Hello, world!");\n',
  node: 'console.log("Hello, world!");\n',
  typescript: 'const name: string = "world";\nconsole.log(`Hello, ${name}!`);\n',
  ruby: 'puts "Hello, world!"\n',
  php: '<?php\necho "Hello, world!\\n";\n',
  perl: 'print "Hello, world!\\n";\n',
  lua: 'print("Hello, world!")\n',
  bash: 'echo "Hello, world!"\n',
  sh: 'echo "Hello, world!"\n',
  c: '#include <stdio.h>\n\nint main(void) {\n    printf("Hello, world!\\n");\n    return 0;\n}\n',
  cpp:
    '#include <iostream>\n\nint main() {\n    std::cout << "Hello, world!" << std::endl;\n    return 0;\n}\n',
  java:
    'public class Main {\n    public static void main(String[] args) {\n' +
    '        System.out.println("Hello, world!");\n    }\n}\n',
  go: 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("Hello, world!")\n}\n',
  rust: 'fn main() {\n    println!("Hello, world!");\n}\n',
  kotlin: 'fun main() {\n    println("Hello, world!")\n}\n',
  csharp:
    'using System;\n\nclass Program {\n    static void Main() {\n' +
    '        Console.WriteLine("Hello, world!");\n    }\n}\n',
  haskell: 'main :: IO ()\nmain = putStrLn "Hello, world!"\n',
  r: 'cat("Hello, world!\\n")\n',
};

const NAMES = {
  python: "Python",
  javascript: "JavaScript (Node.js)",
  typescript: "TypeScript",
  bash: "Bash",
  c: "C",
  cpp: "C++",
  java: "Java",
  rust: "Rust",
  go: "Go",
  perl: "Perl",
  ruby: "Ruby",
  php: "PHP",
  lua: "Lua",
  kotlin: "Kotlin",
  csharp: "C#",
  haskell: "Haskell",
  r: "R",
};
