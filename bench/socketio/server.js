// Socket.IO server for the side-by-side benchmark.
//
//   (cd bench/socketio && npm install && node server.js 9002)
//
// WebSocket transport only, no compression. Events:
//   "bcast" (payload) -> emitted to every socket as "msg" (broadcast fan-out)
//   "req"   (payload) -> answered to the sender as "res" (request/reply)
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 9002);
const io = new Server(port, { transports: ["websocket"], perMessageDeflate: false });

io.on("connection", (socket) => {
  socket.on("bcast", (payload) => io.emit("msg", payload));
  socket.on("req", (payload) => socket.emit("res", payload));
});

console.error(`socket.io listening on ${port}`);
